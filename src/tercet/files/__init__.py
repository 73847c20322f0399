"""The Files API's storage: file metadata, content-addressed blobs, and documents as text."""
