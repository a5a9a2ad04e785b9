"""LLM backends against real components: the embedded SmolLM2, sqlite, a loopback HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from wfopt.config import ExecutorConfig, HardwareConfig, ModelConfig
from wfopt.llm import CachedLLM, LLMError, SamplingParams, build_executor, sampling_params
from wfopt.llm.local import LocalLLM
from wfopt.llm.openai_backend import OpenAILLM

REPO = Path(__file__).resolve().parents[1]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=20)
# different prompt lengths (left padding) and different token budgets in one batch
PROMPTS = [
    ("What is 12 times 7?", 20),
    ("Name one color.", 6),
    ("Write a long sentence about rivers, mountains, valleys, forests and the sea.", 24),
    ("Hi", 12),
]


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def smollm2_cfg():
    return OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml")
    )


# ------------------------------------------------------------------------- model loading


def test_safetensors_cache_has_the_gguf_logits(tmp_path, monkeypatch, embedded_llm):
    """Convert the GGUF into an empty cache dir; the saved copy computes identical logits."""
    from wfopt.models import _convert_gguf, _converted_dir, _source, load_causal_lm, model_dir

    monkeypatch.setenv("WFOPT_CACHE_DIR", str(tmp_path))
    cfg = smollm2_cfg()
    source, gguf_file = _source(cfg)
    target = _converted_dir(source, gguf_file, cfg.name)
    assert target.is_relative_to(tmp_path / "models") and not target.exists()
    gguf_model, gguf_tokenizer = _convert_gguf(source, gguf_file, target)
    assert model_dir(cfg) == str(target) and (target / "model.safetensors").is_file()
    assert not list(target.parent.glob(".*"))  # no temp dir left behind

    start = time.perf_counter()
    cached = load_causal_lm(cfg, dtype="float32")
    load_s = time.perf_counter() - start
    print(f"safetensors load: {load_s:.2f} s")
    prompt = embedded_llm.render(msgs("What is 12 times 7?"))
    ids = gguf_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    assert ids["input_ids"][0].tolist() == embedded_llm.tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        assert torch.equal(gguf_model(**ids).logits, cached(**ids).logits)
    assert cached.dtype == torch.float32 and not cached.training


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    from wfopt.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), {"name": "x", "path": "no-such-org/no-such-model"}
    )
    with pytest.raises(OSError, match="local directory"):
        load_tokenizer(cfg)


def test_resolve_dtype():
    from wfopt.models import resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")


# ------------------------------------------------------------------- local batched backend


def test_choose_tokens_greedy_temperature_and_top_p():
    from wfopt.llm.local import choose_tokens

    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).repeat(4, 1)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.0, top_p=0.75),  # keeps 0.7 + 0.2
        SamplingParams(temperature=1.0, top_p=0.0),  # keeps the top token only
    ]
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    draws = torch.tensor([choose_tokens(logits, params, gens) for _ in range(3000)])
    assert (draws[:, 0] == 0).all() and (draws[:, 3] == 0).all()
    freq = torch.bincount(draws[:, 1], minlength=3) / len(draws)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)
    nucleus = torch.bincount(draws[:, 2], minlength=3) / len(draws)
    assert nucleus[2] == 0 and abs(nucleus[0] - 0.7 / 0.9) < 0.03
    # a row's draws depend only on its own generator
    again = [torch.Generator().manual_seed(1)]
    assert [choose_tokens(logits[:1], params[1:2], again)[0] for _ in range(50)] == draws[
        :50, 1
    ].tolist()


def test_batched_greedy_equals_one_at_a_time(embedded_llm):
    params = [SamplingParams(max_new_tokens=n) for _, n in PROMPTS]

    async def main():
        before = embedded_llm.batches
        together = await asyncio.gather(
            *(
                embedded_llm.complete(msgs(p), sp)
                for (p, _), sp in zip(PROMPTS, params, strict=True)
            )
        )
        assert embedded_llm.batches == before + 1  # all four went through one padded batch
        assert embedded_llm.batch_sizes[-1] == len(PROMPTS)
        alone = [
            await embedded_llm.complete(msgs(p), sp)
            for (p, _), sp in zip(PROMPTS, params, strict=True)
        ]
        return together, alone

    together, alone = asyncio.run(main())
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
    for completion, (prompt, limit) in zip(together, PROMPTS, strict=True):
        n_prompt = len(embedded_llm.tokenizer(embedded_llm.render(msgs(prompt)))["input_ids"])
        assert completion.prompt_tokens == n_prompt
        assert 0 < completion.completion_tokens <= limit
        assert completion.cost_usd == 0.0 and completion.latency_s > 0
    assert together[1].completion_tokens == 6  # "Name one color." runs into its own limit


def test_greedy_matches_transformers_generate(embedded_llm):
    tok, model = embedded_llm.tokenizer, embedded_llm.model
    for prompt, _ in PROMPTS[:3:2]:
        text = embedded_llm.render(msgs(prompt))
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            reference = model.generate(**ids, max_new_tokens=20, do_sample=False)
        expected = tok.decode(reference[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert asyncio.run(embedded_llm.complete(msgs(prompt), GREEDY)).text == expected


def test_sampling_is_reproducible_per_sample_index(embedded_llm):
    hot = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=3)
    question = msgs(PROMPTS[0][0])

    async def main():
        a = await embedded_llm.complete(question, hot, sample_index=0)
        # the same request in a different batch composition, next to a greedy row
        b, greedy = await asyncio.gather(
            embedded_llm.complete(question, hot, sample_index=0),
            embedded_llm.complete(msgs(PROMPTS[1][0]), GREEDY),
        )
        others = await asyncio.gather(
            *(embedded_llm.complete(question, hot, sample_index=i) for i in (1, 2, 3))
        )
        return a, b, greedy, others

    a, b, greedy, others = asyncio.run(main())
    assert a.text == b.text
    assert all(o.text != a.text for o in others)  # 16 tokens at T=1: collisions ~impossible
    assert len({o.text for o in others}) == 3
    alone = asyncio.run(embedded_llm.complete(msgs(PROMPTS[1][0]), GREEDY))
    assert greedy.text == alone.text


def test_eos_stops_a_row_and_ignore_eos_does_not(embedded_llm):
    long = SamplingParams(temperature=0.0, max_new_tokens=200)

    async def main():
        return await asyncio.gather(
            embedded_llm.complete(msgs("Hi"), long),
            embedded_llm.complete(msgs(PROMPTS[0][0]), SamplingParams(max_new_tokens=30)),
        )

    short, other = asyncio.run(main())
    # "Hi" gets a short greeting that ends with <|im_end|> well before 200 tokens
    assert short.completion_tokens < 30 and short.text and "<|im_end|>" not in short.text
    assert other.completion_tokens <= 30

    # the benchmark mode: same weights, stop tokens ignored, exactly max_new_tokens each
    forced = LocalLLM(embedded_llm.model, embedded_llm.tokenizer, "forced", ignore_eos=True)
    out = asyncio.run(forced.complete(msgs("Hi"), SamplingParams(max_new_tokens=40)))
    assert out.completion_tokens == 40 and out.text.startswith(short.text)


def test_event_loop_stays_responsive_while_generating(embedded_llm):
    async def main():
        ticks = 0
        task = asyncio.create_task(
            embedded_llm.complete(msgs(PROMPTS[2][0]), SamplingParams(max_new_tokens=24))
        )
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return ticks, task.result().latency_s

    ticks, latency = asyncio.run(main())
    assert ticks >= 5 and ticks * 0.01 <= latency * 1.5 + 0.1


def test_plan_admission_is_fifo_bounded_by_room_and_prefill_budget():
    from wfopt.llm.decoding import plan_admission

    assert plan_admission([10, 10, 10], room=2, budget=1000) == 2
    assert plan_admission([10, 10, 10], room=0, budget=1000) == 0
    assert plan_admission([100, 10, 10], room=8, budget=250) == 2  # 3 x 100 > 250
    assert plan_admission([10, 300, 10], room=8, budget=250) == 1  # first come, first served
    assert plan_admission([900, 10], room=8, budget=250) == 1  # too long: prefilled alone
    assert plan_admission([], room=8, budget=250) == 0


def check_ids(llm: LocalLLM, completion, prompt: str) -> None:
    """The ids round-trip: what the model saw and emitted, and whether it stopped."""
    from wfopt.tokens import encode_prompt

    ids = completion.completion_ids
    assert completion.prompt_ids == encode_prompt(llm.render(msgs(prompt)), llm.tokenizer)
    assert completion.prompt_tokens == len(completion.prompt_ids)
    assert completion.completion_tokens == len(ids) > 0
    assert completion.stopped == (ids[-1] in llm.stop_ids)
    text_ids = ids[:-1] if completion.stopped else ids
    assert completion.text == llm.tokenizer.decode(text_ids, skip_special_tokens=True)


def test_late_requests_join_the_running_batch_and_match_running_alone(embedded_llm):
    """Requests submitted while another decodes join its batch (between decode steps, at most
    `max_batch_size` rows at once); each answer, sampled or greedy, equals the same request
    run alone, token for token."""
    llm = LocalLLM(embedded_llm.model, embedded_llm.tokenizer, "cb", max_batch_size=3)
    hot = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=20, seed=7)
    first = (PROMPTS[2][0], SamplingParams(max_new_tokens=40), 0)  # greedy, long
    late = [
        (PROMPTS[0][0], hot, 0),
        (PROMPTS[0][0], hot, 1),  # same prompt, another sample
        ("Hi", SamplingParams(max_new_tokens=30), 0),  # greedy, stops early on <|im_end|>
        (PROMPTS[1][0], hot, 3),
        (PROMPTS[3][0], SamplingParams(temperature=0.8, top_p=0.5, max_new_tokens=12), 2),
    ]

    async def steps_later(n: int) -> None:
        target = llm.decode_steps + n
        while llm.decode_steps < target:
            await asyncio.sleep(0.002)

    async def main():
        running = asyncio.create_task(llm.complete(msgs(first[0]), first[1], first[2]))
        await steps_later(3)
        assert not running.done() and llm.joined == 0
        tasks = []
        for i, (prompt, params, index) in enumerate(late):
            tasks.append(asyncio.create_task(llm.complete(msgs(prompt), params, index)))
            if i % 2:  # arrivals at different steps, some while the batch is full
                await steps_later(2)
        together = await asyncio.gather(running, *tasks)
        steps, rows = llm.decode_steps, llm.decoded_rows
        alone = [await llm.complete(msgs(p), sp, i) for p, sp, i in [first, *late]]
        return together, alone, steps, rows

    together, alone, steps, rows = asyncio.run(main())
    for a, b in zip(together, alone, strict=True):
        assert (a.text, a.completion_ids, a.stopped) == (b.text, b.completion_ids, b.stopped)
    for completion, (prompt, _, _) in zip(together, [first, *late], strict=True):
        check_ids(llm, completion, prompt)
    assert together[3].stopped
    assert llm.joined >= 2  # the first two late requests at least joined rows mid-decode
    assert llm.max_rows == 3  # the cap held (and was reached)
    assert rows / steps > 1.5  # decode steps carried several rows
    assert len(llm.queue_waits) == len(llm.latencies) == 2 * len(together)
    assert all(0 <= w <= t for w, t in zip(llm.queue_waits, llm.latencies, strict=True))


def test_static_batching_stays_selectable(embedded_llm):
    """`batching="static"` (the older scheme, kept for comparison): one batch decodes to its
    end; the answers are the continuous backend's."""
    static = LocalLLM(
        embedded_llm.model, embedded_llm.tokenizer, "static", batching="static", batch_wait_ms=50
    )
    params = [SamplingParams(max_new_tokens=n) for _, n in PROMPTS]

    async def run_all(llm):
        return await asyncio.gather(
            *(llm.complete(msgs(p), sp) for (p, _), sp in zip(PROMPTS, params, strict=True))
        )

    old = asyncio.run(run_all(static))
    assert static.batch_sizes == [len(PROMPTS)] and static.joined == 0
    # the longest row's tokens: the prefill chose the first, one decode step each other
    assert static.decode_steps == max(c.completion_tokens for c in old) - 1
    new = asyncio.run(run_all(embedded_llm))
    assert [c.completion_ids for c in old] == [c.completion_ids for c in new]
    with pytest.raises(ValueError, match="batching"):
        LocalLLM(embedded_llm.model, embedded_llm.tokenizer, "x", batching="paged")


# --------------------------------------------------------------------------------- cache


def test_cache_makes_reruns_free(embedded_llm, tmp_path):
    async def run_all(llm):
        return await asyncio.gather(
            *(llm.complete(msgs(p), GREEDY, sample_index=i) for i, (p, _) in enumerate(PROMPTS))
        )

    first = CachedLLM(embedded_llm, tmp_path / "c.sqlite")
    batches = embedded_llm.batches
    out1 = asyncio.run(run_all(first))
    assert (first.hits, first.misses) == (0, 4) and not any(c.cached for c in out1)
    assert embedded_llm.batches > batches
    asyncio.run(first.aclose())

    second = CachedLLM(embedded_llm, tmp_path / "c.sqlite")  # as a new process would see it
    batches = embedded_llm.batches
    out2 = asyncio.run(run_all(second))
    assert (second.hits, second.misses) == (4, 0)
    assert embedded_llm.batches == batches  # zero new generations
    assert [c.text for c in out2] == [c.text for c in out1] and all(c.cached for c in out2)
    assert [c.completion_tokens for c in out2] == [c.completion_tokens for c in out1]

    # a different sample index is a different request
    asyncio.run(second.complete(msgs(PROMPTS[0][0]), GREEDY, sample_index=99))
    assert second.misses == 1 and embedded_llm.batches == batches + 1


def test_cache_generates_identical_concurrent_requests_once(embedded_llm, tmp_path):
    cached = CachedLLM(embedded_llm, tmp_path / "c.sqlite")
    few = SamplingParams(max_new_tokens=4)

    async def main():
        return await asyncio.gather(*(cached.complete(msgs("Hi there"), few) for _ in range(3)))

    batches = embedded_llm.batches
    outs = asyncio.run(main())
    assert (cached.hits, cached.misses) == (2, 1)
    assert embedded_llm.batches == batches + 1 and embedded_llm.batch_sizes[-1] == 1
    assert len({c.text for c in outs}) == 1 and [c.cached for c in outs].count(True) == 2


def test_cache_does_not_store_failures(tmp_path):
    path = tmp_path / "c.sqlite"
    cached = CachedLLM(OpenAILLM("m", f"http://127.0.0.1:{closed_port()}/v1", max_retries=0), path)
    for _ in range(2):
        with pytest.raises(LLMError):
            asyncio.run(cached.complete(msgs("x"), SamplingParams()))
    assert cached.misses == 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0


def test_build_executor(embedded_llm, tmp_path):
    model_cfg = smollm2_cfg()
    cache_path = tmp_path / "deep" / "dir" / "r.sqlite"
    executor = OmegaConf.merge(
        OmegaConf.structured(ExecutorConfig),
        {"cache_path": str(cache_path), "sampling": {"temperature": 0.3, "max_new_tokens": 9}},
    )
    llm = build_executor(model_cfg, executor, HardwareConfig(), shared_local=embedded_llm)
    assert isinstance(llm, CachedLLM) and llm.inner is embedded_llm and cache_path.is_file()
    assert sampling_params(executor.sampling) == SamplingParams(0.3, 0.95, 9, 0)

    served = OmegaConf.merge(
        executor, {"backend": "openai", "model": "served", "cache": False, "base_url": "http://x"}
    )
    remote = build_executor(model_cfg, served, HardwareConfig())
    assert isinstance(remote, OpenAILLM) and remote.name == "served"
    # a backend that does not exist is rejected by the schema, before anything is built
    with pytest.raises(ValueError, match=r"expected one of \[same_as_policy, local, openai\]"):
        OmegaConf.merge(served, {"backend": "nope"})


# ----------------------------------------------------------------- OpenAI-compatible server


class ServerState:
    """What the loopback server answers (`script`: statuses, "slow", "malformed" (JSON that
    does not parse) or "incomplete" (JSON without choices), then 200) and saw. An error status
    comes with `Retry-After: retry_after` unless that is None."""

    def __init__(self, script: list[int | str]):
        self.script = script
        self.requests: list[dict] = []
        self.retry_counts: list[str | None] = []  # the client's x-stainless-retry-count
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.delay_s = 0.0
        self.retry_after: str | None = "0.01"  # keeps the client's retries quick


def start_server(state: ServerState) -> tuple[ThreadingHTTPServer, str]:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions protocol."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(body)
                state.retry_counts.append(self.headers.get("x-stainless-retry-count"))
                state.arrivals.append(time.monotonic())
                status = state.script.pop(0) if state.script else 200
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            time.sleep(1.0 if status == "slow" else state.delay_s)
            with state.lock:
                state.in_flight -= 1
            kind, status = status, 200 if isinstance(status, str) else status
            headers = {}
            if status != 200:
                payload = {"error": {"message": f"scripted status {status}"}}
                if state.retry_after is not None:
                    headers["Retry-After"] = state.retry_after
            elif kind == "incomplete":
                payload = {"id": "x", "object": "chat.completion", "model": body["model"]}
            else:
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {
                                "role": "assistant",
                                "content": f"echo: {body['messages'][-1]['content']}",
                            },
                        }
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
                }
            data = json.dumps(payload).encode()
            if kind == "malformed":
                data = data[: len(data) // 2]  # cut off mid-object
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server():
    servers = []

    def _start(script: list[int | str]):
        state = ServerState(script)
        srv, url = start_server(state)
        servers.append(srv)
        return state, url

    yield _start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def fast(url: str, **kwargs) -> OpenAILLM:
    """A client whose retries stay quick: the client's own (statuses) wait the server's
    Retry-After (`ServerState.retry_after`), ours (malformed replies) 10 ms."""
    return OpenAILLM("m", url, malformed_backoff_s=0.01, **kwargs)


def counters(llm: OpenAILLM) -> tuple[int, int, int]:
    return llm.requests, llm.attempts, llm.retries


def test_openai_success_usage_and_cost(server):
    state, url = server([])
    llm = OpenAILLM("served-model", url, price_prompt_per_m=2.0, price_completion_per_m=10.0)
    out = asyncio.run(llm.complete(msgs("ping"), SamplingParams(max_new_tokens=7, seed=5), 2))
    assert out.text == "echo: ping" and not out.cached and out.latency_s > 0
    assert (out.prompt_tokens, out.completion_tokens) == (11, 5)
    assert out.cost_usd == pytest.approx((11 * 2.0 + 5 * 10.0) / 1e6)
    sent = state.requests[0]
    assert (sent["model"], sent["max_tokens"], sent["seed"]) == ("served-model", 7, 7)
    assert sent["messages"] == msgs("ping")
    assert counters(llm) == (1, 1, 0)
    unpriced = OpenAILLM("served-model", url)
    assert asyncio.run(unpriced.complete(msgs("ping"), SamplingParams())).cost_usd is None


def test_openai_retries_429_then_succeeds(server):
    state, url = server([429, 429])
    llm = fast(url, max_retries=3)
    assert asyncio.run(llm.complete(msgs("x"), SamplingParams())).text == "echo: x"
    assert len(state.requests) == 3 and counters(llm) == (1, 3, 2)
    assert state.retry_counts == ["0", "1", "2"]  # the client's own retries


def test_openai_waits_what_the_server_asks(server):
    """A 429's Retry-After (1 s) paces the retry, not the client's first backoff (<= 0.5 s)."""
    state, url = server([429])
    state.retry_after = "1"
    llm = fast(url, max_retries=1)
    assert asyncio.run(llm.complete(msgs("x"), SamplingParams())).text == "echo: x"
    assert counters(llm) == (1, 2, 1) and state.arrivals[1] - state.arrivals[0] >= 0.95


def test_openai_gives_up_after_max_retries(server):
    state, url = server([500] * 10)
    llm = fast(url, max_retries=2)
    with pytest.raises(LLMError, match=r"HTTP 500 after 3 attempt") as err:
        asyncio.run(llm.complete(msgs("x"), SamplingParams()))
    assert url in str(err.value) and len(state.requests) == 3 and counters(llm) == (1, 3, 2)


def test_openai_does_not_retry_a_bad_request(server):
    state, url = server([429, 400])
    llm = fast(url, max_retries=3)
    with pytest.raises(LLMError, match=r"HTTP 400 after 2 attempt"):
        asyncio.run(llm.complete(msgs("x"), SamplingParams()))
    assert len(state.requests) == 2 and counters(llm) == (1, 2, 1)


def test_openai_retries_a_timeout(server):
    state, url = server(["slow"])
    llm = fast(url, max_retries=2, timeout_s=0.3)
    assert asyncio.run(llm.complete(msgs("x"), SamplingParams())).text == "echo: x"
    assert len(state.requests) == 2 and counters(llm) == (1, 2, 1)


def test_openai_gives_up_on_timeouts(server):
    state, url = server(["slow", "slow"])
    llm = fast(url, max_retries=1, timeout_s=0.3)
    with pytest.raises(LLMError, match=r"timeout error after 2 attempt") as err:
        asyncio.run(llm.complete(msgs("x"), SamplingParams()))
    assert url in str(err.value) and len(state.requests) == 2 and counters(llm) == (1, 2, 1)


def test_openai_connection_refused_is_a_clear_error():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = fast(url, max_retries=1, timeout_s=2)
    with pytest.raises(LLMError, match=r"connection error after 2 attempt") as err:
        asyncio.run(llm.complete(msgs("x"), SamplingParams()))
    assert url in str(err.value) and counters(llm) == (1, 2, 1)


def test_openai_retries_malformed_replies(server):
    """JSON that does not parse and JSON without the completion are retried by hand, in the
    same budget as the client's retries (here a 500 between them)."""
    state, url = server(["malformed", 500, "incomplete"])
    llm = fast(url, max_retries=3)
    assert asyncio.run(llm.complete(msgs("x"), SamplingParams())).text == "echo: x"
    assert len(state.requests) == 4 and counters(llm) == (1, 4, 3)
    assert state.retry_counts == ["0", "0", "1", "0"]  # ours start the client's count anew


@pytest.mark.parametrize(
    ("script", "failure"),
    [
        (["malformed"] * 5, "malformed response"),
        (["incomplete"] * 5, "malformed response"),
        (["malformed", 500, "malformed", 200], "malformed response"),
        (["malformed", 500, 500, 200], "HTTP 500"),  # the client has 2 of the 3 attempts
    ],
)
def test_openai_gives_up_on_malformed_replies(server, script, failure):
    """Malformed replies and the client's retries share one budget: 3 attempts in all."""
    state, url = server(script)
    llm = fast(url, max_retries=2)
    with pytest.raises(LLMError, match=rf"{failure} after 3 attempt") as err:
        asyncio.run(llm.complete(msgs("x"), SamplingParams()))
    assert url in str(err.value) and len(state.requests) == 3 and counters(llm) == (1, 3, 2)


def test_openai_bounds_concurrency(server):
    state, url = server([])
    state.delay_s = 0.05
    llm = OpenAILLM("m", url, max_concurrency=3)

    async def main():
        outs = await asyncio.gather(
            *(llm.complete(msgs(str(i)), SamplingParams()) for i in range(12))
        )
        await llm.aclose()
        return outs

    outs = asyncio.run(main())
    assert [o.text for o in outs] == [f"echo: {i}" for i in range(12)]
    assert len(state.requests) == 12 and 1 < state.max_in_flight <= 3


def test_cache_keys_follow_the_generating_model(embedded_llm, tmp_path):
    """Keys carry which weights answer (not `model.name`, a label): the GGUF or the directory
    and their files, the dtype, the chat-template setting; a server's URL and served model; a
    policy checkpoint's name@id (a backend without an identity keys on its name)."""
    from wfopt.llm.cache import CachedLLM, cache_key
    from wfopt.llm.local import LocalLLM
    from wfopt.models import model_dir, model_identity

    cfg = smollm2_cfg()
    gguf = embedded_llm.cache_identity
    assert set(gguf) == {"gguf", "weights", "dtype", "chat_template"}
    assert gguf["gguf"].endswith(cfg.gguf_file) and gguf["dtype"] == "float32"
    cached = CachedLLM(embedded_llm, tmp_path / "c.sqlite")
    original = embedded_llm.name
    try:  # renaming the model does not change whose answers these are
        embedded_llm.name = "another-label"
        assert cached.identity == gguf
    finally:
        embedded_llm.name = original
    same_weights_as_dir = OmegaConf.merge(cfg, {"path": model_dir(cfg), "gguf_file": None})
    as_dir = model_identity(same_weights_as_dir, embedded_llm.model, True)
    assert as_dir["dir"] == str(Path(model_dir(cfg)).resolve()) and as_dir != gguf
    assert model_identity(cfg, embedded_llm.model, False) != gguf
    checkpoint = LocalLLM(embedded_llm.model, embedded_llm.tokenizer, "smollm2@step-4-abc")
    assert CachedLLM(checkpoint, tmp_path / "d.sqlite").identity == "smollm2@step-4-abc"

    executor = OmegaConf.merge(
        OmegaConf.structured(ExecutorConfig),
        {"backend": "openai", "model": "served", "cache": False, "base_url": "http://h:1/v1/"},
    )
    remote = build_executor(cfg, executor, HardwareConfig())
    assert remote.cache_identity == {
        "backend": "openai",
        "base_url": "http://h:1/v1",
        "model": "served",
    }
    other = build_executor(cfg, OmegaConf.merge(executor, {"model": "m2"}), HardwareConfig())
    params = SamplingParams()
    keys = {
        cache_key(identity, msgs("x"), params, 0)
        for identity in (gguf, as_dir, remote.cache_identity, other.cache_identity)
    }
    assert len(keys) == 4
