"""The remote code an exported folder ships for ``trust_remote_code`` (package data): it imports
only torch and transformers, never backlm, and is copied into the folder as it is."""
