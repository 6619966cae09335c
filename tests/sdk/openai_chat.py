"""Calls a chat completion through veilgate with the official OpenAI SDK.

usage: openai_chat.py BASE_URL
Prints the assistant's reply.
"""
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test-sdk-key", max_retries=0, timeout=30)
reply = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
)
print(reply.choices[0].message.content)
