"""LLM backends: the real embedded model, the sqlite cache, and a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wfopt.llm import CachedLLM, LLMError, SamplingParams
from wfopt.llm.openai_backend import OpenAILLM

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=20)
PROMPTS = [
    "What is 12 times 7?",
    "Name one color.",
    "Write a long sentence about rivers, mountains, valleys and the sea.",
    "Hi",
]


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_batched_greedy_equals_one_at_a_time(embedded_llm):
    async def main():
        before = embedded_llm.batches
        together = await asyncio.gather(*(embedded_llm.complete(msgs(p), GREEDY) for p in PROMPTS))
        assert embedded_llm.batches == before + 1  # all four went through one padded batch
        alone = [await embedded_llm.complete(msgs(p), GREEDY) for p in PROMPTS]
        return together, alone

    together, alone = asyncio.run(main())
    assert [c.text for c in together] == [c.text for c in alone]
    for completion, prompt in zip(together, PROMPTS, strict=True):
        n_prompt = len(embedded_llm.tokenizer(embedded_llm.render(msgs(prompt)))["input_ids"])
        assert completion.prompt_tokens == n_prompt
        assert 0 < completion.completion_tokens <= GREEDY.max_new_tokens


def test_greedy_matches_transformers_generate(embedded_llm):
    tok, model = embedded_llm.tokenizer, embedded_llm.model
    prompt = embedded_llm.render(msgs(PROMPTS[2]))
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    reference = model.generate(**ids, max_new_tokens=20, do_sample=False)
    expected = tok.decode(reference[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    ours = asyncio.run(embedded_llm.complete(msgs(PROMPTS[2]), GREEDY))
    assert ours.text == expected


def test_sampling_is_reproducible_per_sample_index(embedded_llm):
    hot = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=3)

    async def main():
        a = await embedded_llm.complete(msgs(PROMPTS[0]), hot, sample_index=0)
        # same request inside a different batch composition gives the same sample
        b, *_ = await asyncio.gather(
            embedded_llm.complete(msgs(PROMPTS[0]), hot, sample_index=0),
            embedded_llm.complete(msgs(PROMPTS[1]), hot, sample_index=0),
        )
        others = [
            await embedded_llm.complete(msgs(PROMPTS[0]), hot, sample_index=i) for i in (1, 2)
        ]
        return a, b, others

    a, b, others = asyncio.run(main())
    assert a.text == b.text
    assert any(o.text != a.text for o in others)


def test_eos_stops_a_row_early(embedded_llm):
    # "Hi" gets a short greeting that ends with <|im_end|> well before 200 tokens.
    long = SamplingParams(temperature=0.0, max_new_tokens=200)
    out = asyncio.run(embedded_llm.complete(msgs("Hi"), long))
    assert out.completion_tokens < 200 and "<|im_end|>" not in out.text


def test_cache_makes_reruns_free(embedded_llm, tmp_path):
    async def run_all(llm):
        return await asyncio.gather(
            *(llm.complete(msgs(p), GREEDY, sample_index=i) for i, p in enumerate(PROMPTS))
        )

    first = CachedLLM(embedded_llm, tmp_path / "c.sqlite")
    batches = embedded_llm.batches
    out1 = asyncio.run(run_all(first))
    assert (first.hits, first.misses) == (0, 4)
    assert embedded_llm.batches > batches

    second = CachedLLM(embedded_llm, tmp_path / "c.sqlite")  # a new process would see the same
    batches = embedded_llm.batches
    out2 = asyncio.run(run_all(second))
    assert (second.hits, second.misses) == (4, 0)
    assert embedded_llm.batches == batches  # zero new generations
    assert [c.text for c in out2] == [c.text for c in out1] and all(c.cached for c in out2)

    # a different sample index is a different request
    asyncio.run(second.complete(msgs(PROMPTS[0]), GREEDY, sample_index=99))
    assert second.misses == 1


# ----------------------------------------------------------------- OpenAI-compatible server


class FakeServerState:
    def __init__(self, script: list[int]):
        self.script = script  # status codes to answer, in order; then 200 forever
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.delay_s = 0.0


def start_server(state: FakeServerState) -> tuple[ThreadingHTTPServer, str]:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions protocol."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(body)
                status = state.script.pop(0) if state.script else 200
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            time.sleep(state.delay_s)
            with state.lock:
                state.in_flight -= 1
            if status != 200:
                payload = json.dumps({"error": {"message": f"status {status}"}}).encode()
            else:
                text = f"echo: {body['messages'][-1]['content']}"
                payload = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text},
                            }
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
                    }
                ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("retry-after-ms", "10")  # keep client backoff short in tests
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def server():
    servers = []

    def _start(script: list[int]):
        state = FakeServerState(script)
        srv, url = start_server(state)
        servers.append(srv)
        return state, url

    yield _start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_openai_success_usage_and_cost(server):
    state, url = server([])
    llm = OpenAILLM("served-model", url, price_prompt_per_m=2.0, price_completion_per_m=10.0)
    out = asyncio.run(llm.complete(msgs("ping"), SamplingParams(max_new_tokens=7), 2))
    assert out.text == "echo: ping"
    assert (out.prompt_tokens, out.completion_tokens) == (11, 5)
    assert out.cost_usd == pytest.approx((11 * 2.0 + 5 * 10.0) / 1e6)
    assert state.requests[0]["max_tokens"] == 7 and state.requests[0]["model"] == "served-model"
    unpriced = OpenAILLM("served-model", url)
    assert asyncio.run(unpriced.complete(msgs("ping"), SamplingParams())).cost_usd is None


def test_openai_retries_429_then_succeeds(server):
    state, url = server([429, 429])
    llm = OpenAILLM("m", url, max_retries=3)
    assert asyncio.run(llm.complete(msgs("x"), SamplingParams())).text == "echo: x"
    assert len(state.requests) == 3


def test_openai_gives_up_after_max_retries(server):
    state, url = server([500] * 10)
    llm = OpenAILLM("m", url, max_retries=2)
    with pytest.raises(LLMError, match="500"):
        asyncio.run(llm.complete(msgs("x"), SamplingParams()))
    assert len(state.requests) == 3


def test_openai_connection_refused_is_a_clear_error():
    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    llm = OpenAILLM("m", f"http://127.0.0.1:{free_port}/v1", max_retries=1, timeout_s=2)
    with pytest.raises(LLMError, match="Connection"):
        asyncio.run(llm.complete(msgs("x"), SamplingParams()))


def test_openai_bounds_concurrency(server):
    state, url = server([])
    state.delay_s = 0.05
    llm = OpenAILLM("m", url, max_concurrency=3)

    async def main():
        await asyncio.gather(*(llm.complete(msgs(str(i)), SamplingParams()) for i in range(12)))

    asyncio.run(main())
    assert len(state.requests) == 12 and state.max_in_flight <= 3
