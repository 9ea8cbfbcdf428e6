"""OpenAI's own clients against Engram's Conversations API.

Run by server/tests/openai.rs with ENGRAM_URL (the server's base URL) and ENGRAM_KEY (an
API key of a tenant). Uses the official `openai` package and the OpenAI Agents SDK, with no
network beyond the server: the agent's model is scripted.
"""

import asyncio
import os
import sys

import openai
from openai import AsyncOpenAI, OpenAI

BASE = os.environ["ENGRAM_URL"] + "/v1"
KEY = os.environ["ENGRAM_KEY"]


def check(condition, message):
    if not condition:
        print("FAILED:", message, file=sys.stderr)
        sys.exit(1)


def texts(items):
    out = []
    for item in items:
        if item.type == "message":
            out.append(item.content[0].text)
        else:
            out.append(item.type)
    return out


def openai_package():
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    conv = client.conversations.create(
        metadata={"topic": "demo"},
        items=[{"role": "user", "content": "turn 0"}],
    )
    check(conv.id.startswith("conv_"), f"conversation id {conv.id}")
    check(conv.metadata == {"topic": "demo"}, f"metadata {conv.metadata}")
    # 25 items in all: the create carried one, then requests of at most 20.
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"}
        for i in range(1, 25)
    ]
    added = client.conversations.items.create(conv.id, items=turns[:20])
    check(len(added.data) == 20, f"added {len(added.data)}")
    check(added.data[0].type == "message" and added.data[0].id.startswith("msg_"), str(added.data[0]))
    # turn 1 is the assistant's, turn 2 the user's.
    check(added.data[0].content[0].type == "output_text", str(added.data[0]))
    check(added.data[1].content[0].type == "input_text", str(added.data[1]))
    check(added.first_id == added.data[0].id and added.last_id == added.data[-1].id, "first/last ids")
    client.conversations.items.create(conv.id, items=turns[20:])
    try:
        client.conversations.items.create(conv.id, items=turns[:21])
        check(False, "21 items in one request were accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"status {e.status_code}")
        check(e.body["type"] == "invalid_request_error", f"body {e.body}")

    # Both orders, in pages of 7 (the SDK follows `after` with the last id of each page).
    asc = list(client.conversations.items.list(conv.id, order="asc", limit=7))
    check(texts(asc) == [f"turn {i}" for i in range(25)], f"asc {texts(asc)}")
    desc = list(client.conversations.items.list(conv.id, order="desc", limit=7))
    check(texts(desc) == [f"turn {i}" for i in reversed(range(25))], f"desc {texts(desc)}")
    first = client.conversations.items.list(conv.id, limit=7)
    check(first.has_more and len(first.data) == 7, "first page has more")
    check(texts(first.data)[0] == "turn 24", "desc is the default order")

    # Function calls keep their call ids.
    client.conversations.items.create(
        conv.id,
        items=[
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
            {"type": "reasoning_note_x", "summary": ["kept as it came"]},
        ],
    )
    newest = client.conversations.items.list(conv.id, limit=3).data
    check(newest[2].type == "function_call" and newest[2].call_id == "call_1", str(newest[2]))
    check(newest[1].type == "function_call_output" and newest[1].output == "rain", str(newest[1]))

    # Retrieve and delete one item.
    item = client.conversations.items.retrieve(asc[3].id, conversation_id=conv.id)
    check(item.id == asc[3].id and item.content[0].text == "turn 3", str(item))
    after = client.conversations.items.delete(asc[3].id, conversation_id=conv.id)
    check(after.id == conv.id, "delete item returns the conversation")
    try:
        client.conversations.items.retrieve(asc[3].id, conversation_id=conv.id)
        check(False, "a deleted item is still there")
    except openai.NotFoundError:
        pass
    left = list(client.conversations.items.list(conv.id, order="asc", limit=100))
    check(len(left) == 27, f"{len(left)} items left")

    # Metadata, then the conversation itself.
    updated = client.conversations.update(conv.id, metadata={"topic": "changed"})
    check(updated.metadata == {"topic": "changed"}, str(updated))
    check(client.conversations.retrieve(conv.id).metadata == {"topic": "changed"}, "retrieve")
    deleted = client.conversations.delete(conv.id)
    check(deleted.deleted and deleted.id == conv.id, str(deleted))
    try:
        client.conversations.retrieve(conv.id)
        check(False, "a deleted conversation is still there")
    except openai.NotFoundError as e:
        check(e.body["type"] == "invalid_request_error", f"body {e.body}")

    try:
        OpenAI(base_url=BASE, api_key="egk_not_a_key", max_retries=0).conversations.create()
        check(False, "a bad key was accepted")
    except openai.AuthenticationError:
        pass
    print("openai package: ok")


async def agents_sdk():
    from agents import Agent, Model, ModelResponse, OpenAIConversationsSession, Runner, Usage
    from agents import set_tracing_disabled
    from openai.types.responses import ResponseOutputMessage, ResponseOutputText

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=BASE, api_key=KEY, max_retries=0)

    # The session's own operations.
    session = OpenAIConversationsSession(openai_client=client)
    items = [{"role": "user", "content": f"note {i}"} for i in range(25)]
    await session.add_items(items)
    last = await session.get_items(limit=5)
    check([i["content"][0]["text"] for i in last] == [f"note {i}" for i in range(20, 25)], str(last))
    everything = await session.get_items()
    check(len(everything) == 25, f"{len(everything)} items")
    popped = await session.pop_item()
    check(popped["content"][0]["text"] == "note 24", str(popped))
    check(len(await session.get_items()) == 24, "pop removed one")
    conversation_id = session.session_id
    await session.clear_session()
    try:
        await client.conversations.retrieve(conversation_id)
        check(False, "clear_session left the conversation")
    except openai.NotFoundError:
        pass

    # Two turns of an agent whose model is scripted: the second sees the first.
    seen = []

    class Scripted(Model):
        async def get_response(self, system_instructions, input, model_settings, tools, output_schema,
                               handoffs, tracing, *, previous_response_id=None, conversation_id=None,
                               prompt=None):
            seen.append(input)
            reply = "Nice to meet you, Ada." if len(seen) == 1 else "Your name is Ada."
            message = ResponseOutputMessage(
                id=f"msg_scripted_{len(seen)}",
                type="message",
                role="assistant",
                status="completed",
                content=[ResponseOutputText(type="output_text", text=reply, annotations=[])],
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args, **kwargs):
            raise NotImplementedError

    agent = Agent(name="assistant", instructions="Be brief.", model=Scripted())
    session = OpenAIConversationsSession(openai_client=client)
    first = await Runner.run(agent, "Hi, my name is Ada.", session=session)
    check(first.final_output == "Nice to meet you, Ada.", str(first.final_output))
    second = await Runner.run(agent, "What is my name?", session=session)
    check(second.final_output == "Your name is Ada.", str(second.final_output))
    history = str(seen[1])
    check("my name is Ada" in history and "Nice to meet you, Ada." in history, f"second turn saw {seen[1]}")
    stored = await session.get_items()
    check(len(stored) == 4, f"{len(stored)} stored items: {stored}")
    await session.clear_session()
    print("agents sdk: ok")


if __name__ == "__main__":
    print("openai", openai.__version__)
    openai_package()
    asyncio.run(agents_sdk())
