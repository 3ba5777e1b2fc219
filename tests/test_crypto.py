"""Secrets at rest: Fernet with rotation."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from bot.config import Secret
from bot.crypto import FERNET_PURPOSE, EncryptionUnavailable, UndecryptableSecret, Vault, derive_key, fernet_key


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


# What a PaaS's `"generator": "secret"` makes: 64 hex characters.
GENERATED = "5f" * 32


def test_a_generated_secret_is_a_key_and_the_same_secret_reads_after_a_restart():
    token = Vault((Secret(GENERATED),)).encrypt("rpa_SECRET")
    assert "rpa_SECRET" not in token
    assert Vault((Secret(GENERATED),)).decrypt(token).reveal() == "rpa_SECRET"
    with pytest.raises(UndecryptableSecret):
        Vault((Secret("6f" * 32),)).decrypt(token)


def test_the_derivation_never_changes():
    """Rows written under a generated secret must read in every later version: a token made by 0.5.0."""
    written = (
        "gAAAAABrFMlwdqG2b4m5Qcu6jp0pDekddaaNyk5ncsV7NKwj15ZS7QrLtToDMGUGwiDw1vJw1DE6inmrPmgAFPtTwzf4RlAWyGDN2RIFQhUOt"
        "snoQrbwXm4="
    )
    assert Vault((Secret(GENERATED),)).decrypt(written).reveal() == "rpa_written_by_0.5.0"


def test_a_fernet_key_is_used_as_it_is():
    fernet = key()
    token = Vault((fernet,)).encrypt("rpa_x")
    assert Fernet(fernet.reveal()).decrypt(token.encode()) == b"rpa_x"  # rows from before read unchanged
    assert fernet_key(fernet) == fernet.reveal().encode()


def test_rotation_mixes_both_kinds():
    old = key()
    stored = Vault((old,)).encrypt("rpa_old")
    rotating = Vault((Secret(GENERATED), old))
    assert rotating.decrypt(stored).reveal() == "rpa_old"
    rotated = rotating.rotate(stored)
    assert Vault((Secret(GENERATED),)).decrypt(rotated).reveal() == "rpa_old"
    # and back: a generated secret's rows read with it kept after a new Fernet key
    assert Vault((key(), Secret(GENERATED))).decrypt(rotated).reveal() == "rpa_old"


def test_derived_keys_are_independent_per_purpose():
    vault_key = derive_key(GENERATED, FERNET_PURPOSE)
    webhook_key = derive_key(GENERATED, b"webhook tokens")
    assert len(vault_key) == len(webhook_key) == 32
    assert vault_key != webhook_key
    assert derive_key(GENERATED, b"webhook tokens") == webhook_key  # deterministic: the same after a restart
    assert derive_key("6f" * 32, b"webhook tokens") != webhook_key
    assert GENERATED.encode() not in vault_key and len(derive_key(GENERATED, b"x", length=64)) == 64
