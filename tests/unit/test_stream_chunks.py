"""The queue door's stream chunks (handler.answer_chunks): an answer over RunPod's 1 MB chunk
limit is cut into parts that join back to the same answer, each under the limit."""

from __future__ import annotations

import json

import handler


def test_a_small_answer_is_one_chunk():
    assert handler.answer_chunks({"segments": [], "warnings": []}) == [{"result": {"segments": [], "warnings": []}}]
    assert handler.answer_chunks("1\n00:00:00,000 --> 00:00:01,000\nДа\n") == [{"result": "1\n00:00:00,000 --> 00:00:01,000\nДа\n"}]


def test_a_large_answer_is_cut_into_parts_under_the_limit_that_join_back():
    answer = {"segments": [{"start": n * 1.0, "end": n + 0.5, "text": "Съешь же ещё этих мягких французских булок " * 3}
                           for n in range(6000)]}
    chunks = handler.answer_chunks(answer)
    assert len(chunks) > 2
    assert all(len(json.dumps(chunk, ensure_ascii=False).encode("utf-8")) < 1_000_000 for chunk in chunks)
    assert [chunk["part"] for chunk in chunks] == list(range(len(chunks))) and {c["parts"] for c in chunks} == {len(chunks)}
    assert json.loads("".join(chunk["result_json"] for chunk in chunks)) == answer
