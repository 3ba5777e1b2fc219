"""Secrets at rest: RunPod keys and interaction tokens are stored only as Fernet tokens.

BOT_ENCRYPTION_KEY may list several keys: the first encrypts, all of them decrypt, so an operator can
rotate by putting a new key first and keeping the old one until `rotate()` has re-encrypted everything.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bot.config import Secret
from bot.errors import BotError


class EncryptionUnavailable(BotError):
    def __init__(self) -> None:
        super().__init__("The bot operator has not set BOT_ENCRYPTION_KEY, so keys cannot be stored safely.")

    advice = "Ask the operator to set it (see .env.example), then try again."


class UndecryptableSecret(BotError):
    def __init__(self) -> None:
        super().__init__("A stored key cannot be decrypted with the current BOT_ENCRYPTION_KEY.")

    advice = "The operator must keep the old key in BOT_ENCRYPTION_KEY when rotating; or run /runpod setup again."


class Vault:
    def __init__(self, keys: tuple[Secret, ...]) -> None:
        self._fernet = MultiFernet([Fernet(key.reveal()) for key in keys]) if keys else None

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def encrypt(self, plain: str) -> str:
        if self._fernet is None:
            raise EncryptionUnavailable()
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> Secret:
        if self._fernet is None:
            raise EncryptionUnavailable()
        try:
            return Secret(self._fernet.decrypt(token.encode()).decode())
        except InvalidToken:
            raise UndecryptableSecret() from None

    def rotate(self, token: str) -> str:
        """Re-encrypt under the first key (the same secret, a new ciphertext)."""
        if self._fernet is None:
            raise EncryptionUnavailable()
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret() from None
