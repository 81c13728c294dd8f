"""The REST gateway: google.api.http transcoding in front of every Grace gRPC service."""
