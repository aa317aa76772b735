"""The OpenAI Python client against `scaledown serve`, unchanged apart from extra_body.

Usage: python openai_client.py BASE_URL QUESTION DOCUMENT
Prints one JSON object: the models listed, the plain answer (with its finish reason and
usage), the streamed pieces, and the error the client raises on a bad request.
"""

import json
import sys

import openai

base_url, question, document = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="not-needed")
model = client.models.list().data[0].id
messages = [{"role": "user", "content": question}]
documents = {"documents": [{"title": "doc", "text": document}]}

plain = client.chat.completions.create(
    model=model, messages=messages, max_tokens=4, temperature=0, extra_body=documents
)
pieces = []
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=4, stream=True, extra_body=documents
)
finish = None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
try:
    client.chat.completions.create(model=model, messages=[], extra_body=documents)
    refused = None
except openai.BadRequestError as e:
    refused = {"status": e.status_code, "message": str(e)}

print(json.dumps({
    "model": model,
    "answer": plain.choices[0].message.content,
    "finish_reason": plain.choices[0].finish_reason,
    "usage": plain.usage.model_dump() if plain.usage else None,
    "pieces": pieces,
    "stream_finish_reason": finish,
    "refused": refused,
}))
