"""Secrets at rest: RunPod keys and interaction tokens are stored only as Fernet tokens.

BOT_ENCRYPTION_KEY may list several entries: the first encrypts, all of them decrypt, so an operator can
rotate by putting a new one first and keeping the old one until `rotate()` has re-encrypted everything.
An entry is a Fernet key, used as it is (so rows written under it read unchanged), or any long random
secret, such as the one a PaaS generates, from which a Fernet key is derived (`derive_key`).
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.config import Secret, is_fernet_key
from bot.errors import BotError

# HKDF's salt: fixed, naming this application, so a secret shared with something else derives other keys here.
# The input is already a long random secret; the salt separates domains, it does not add strength.
_SALT = b"runpod-imagine-bot BOT_ENCRYPTION_KEY"
# What each derived key is for (HKDF's info): one secret, independent keys. Changing one makes every row
# written under it unreadable, so these are fixed forever.
FERNET_PURPOSE = b"fernet key for secrets at rest v1"


def derive_key(secret_material: str, purpose: bytes, length: int = 32) -> bytes:
    """A key of `length` bytes for `purpose`, derived from a long random secret with HKDF-SHA256.

    Different purposes give independent keys from the same secret (the Fernet key of the vault, an HMAC key
    for webhook tokens...), and none of them tells anything about the secret or the others.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=purpose)
    return hkdf.derive(secret_material.encode())


def fernet_key(entry: Secret) -> bytes:
    """The Fernet key an entry of BOT_ENCRYPTION_KEY stands for: itself if it is one, else derived from it."""
    value = entry.reveal()
    if is_fernet_key(value):
        return value.encode()
    return base64.urlsafe_b64encode(derive_key(value, FERNET_PURPOSE))


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
        self._fernet = MultiFernet([Fernet(fernet_key(key)) for key in keys]) if keys else None

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
