"""Secrets at rest: Fernet with rotation."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from bot.config import Secret
from bot.crypto import EncryptionUnavailable, UndecryptableSecret, Vault


def key() -> Secret:
    return Secret(Fernet.generate_key().decode())


def test_round_trip_and_ciphertext_hides_the_secret():
    vault = Vault((key(),))
    token = vault.encrypt("rpa_SECRET_KEY_123")
    assert "rpa_SECRET_KEY_123" not in token
    assert vault.decrypt(token).reveal() == "rpa_SECRET_KEY_123"


def test_rotation_new_key_first_old_key_still_decrypts():
    old, new = key(), key()
    stored = Vault((old,)).encrypt("rpa_x")
    rotating = Vault((new, old))
    assert rotating.decrypt(stored).reveal() == "rpa_x"
    rotated = rotating.rotate(stored)
    assert Vault((new,)).decrypt(rotated).reveal() == "rpa_x"
    with pytest.raises(UndecryptableSecret, match="cannot be decrypted"):
        Vault((new,)).decrypt(stored)


def test_without_a_key_nothing_is_stored():
    vault = Vault(())
    assert not vault.available
    with pytest.raises(EncryptionUnavailable, match="BOT_ENCRYPTION_KEY"):
        vault.encrypt("x")
