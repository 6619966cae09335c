"""Calls a chat completion through veilgate with the official OpenAI SDK.

usage: openai_chat.py BASE_URL [VEILGATE_TOKEN]
Prints the assistant's reply. With a token, the SDK sends it in
x-veilgate-token (a client of veilgate's [[clients]]); with key:TOKEN, as
its API key (a preset whose keys veilgate holds).
"""
import sys

import openai

token = sys.argv[2] if len(sys.argv) > 2 else None
api_key = token[4:] if token and token.startswith("key:") else "sk-test-sdk-key"
headers = {"x-veilgate-token": token} if token and not token.startswith("key:") else None
client = openai.OpenAI(base_url=sys.argv[1], api_key=api_key, max_retries=0, timeout=30, default_headers=headers)
reply = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
)
print(reply.choices[0].message.content)
