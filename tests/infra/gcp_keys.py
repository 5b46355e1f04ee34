"""A GCP service-account key file as the console downloads it (a fresh RSA key; nothing real)."""
from __future__ import annotations

import json
from pathlib import Path


def write_service_account(path: Path, project: str = "p") -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "0" * 40, "private_key": pem,
        "client_email": f"broker@{project}.iam.gserviceaccount.com", "client_id": "1" * 21,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": "https://oauth2.googleapis.com/token",
    }))
    return path
