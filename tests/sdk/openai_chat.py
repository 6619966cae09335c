"""Calls a chat completion through veilgate with the official OpenAI SDK.

usage: openai_chat.py BASE_URL [VEILGATE_TOKEN]
Prints the assistant's reply. The model is VEILGATE_MODEL (default
gpt-4o-mini). With a token, the SDK sends it in
x-veilgate-token; key:TOKEN as its API key (veilgate_args.py).
"""
import os
import sys

import openai
from veilgate_args import credentials

api_key, headers = credentials(sys.argv, "sk-test-sdk-key")
client = openai.OpenAI(base_url=sys.argv[1], api_key=api_key, max_retries=0, timeout=30, default_headers=headers)
reply = client.chat.completions.create(
    model=os.environ.get("VEILGATE_MODEL", "gpt-4o-mini"),
    messages=[{"role": "user", "content": "Say hello"}],
)
print(reply.choices[0].message.content)
