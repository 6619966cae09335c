"""Streams one answer through veilgate with the official google-genai SDK.

usage: genai_stream.py BASE_URL [VEILGATE_TOKEN]
Prints the answer text (thoughts left out). With a token, the SDK sends it
in x-veilgate-token; key:TOKEN as its API key (veilgate_args.py).
"""
import sys

from google import genai
from google.genai import types
from veilgate_args import credentials

api_key, headers = credentials(sys.argv, "AIza-test-key")
client = genai.Client(api_key=api_key, http_options=types.HttpOptions(base_url=sys.argv[1], headers=headers))
text = []
for chunk in client.models.generate_content_stream(
    model="gemini-2.5-pro",
    contents="Say hello",
    config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True)),
):
    for candidate in chunk.candidates or []:
        for part in (candidate.content.parts if candidate.content else None) or []:
            if part.text and not part.thought:
                text.append(part.text)
print("".join(text))
