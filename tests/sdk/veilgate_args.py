"""The token argument the SDK scripts share.

A token is sent in x-veilgate-token (a client of veilgate's [[clients]]);
key:TOKEN is sent as the SDK's API key instead (a preset whose provider
keys veilgate holds).
"""


def credentials(argv, provider_key):
    """The SDK's api_key and its extra headers, from argv[2] if given."""
    token = argv[2] if len(argv) > 2 else None
    if token and token.startswith("key:"):
        return token[4:], None
    return provider_key, ({"x-veilgate-token": token} if token else None)
