"""The workflow builder: signatures, chain/group/chord, and the graphs they become."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskharbor.canvas import (
    Chain,
    Chord,
    Group,
    Item,
    Signature,
    build_graph,
    chain,
    chord,
    group,
)
from taskharbor.spec import EnqueueRequest, InvalidRequest, StepSpec, WorkflowGraph
from taskharbor.spec.records import map_ref, ref_indexes


def s(task: str, *args: Any, **kwargs: Any) -> Signature:
    return Signature(task, args, kwargs, {}, False)


def si(task: str, *args: Any, **kwargs: Any) -> Signature:
    return Signature(task, args, kwargs, {}, True)


def request_for(signature: Signature) -> EnqueueRequest:
    """What the App does, minus task defaults: the signature's options on the request."""
    return EnqueueRequest(signature.task, signature.args, signature.kwargs, **signature.opts)


def build(workflow: Item) -> WorkflowGraph:
    return build_graph(workflow, request_for)


def shape(graph: WorkflowGraph) -> list[tuple[str, tuple[int, ...], Any]]:
    """Each step as (task, after, input): what these tests compare."""
    return [(step.request.task, step.after, step.input) for step in graph.steps]


# -- signatures ---------------------------------------------------------------


def test_options_returns_a_merged_copy() -> None:
    base = s("a", 1).options(queue="q", priority=1)
    changed = base.options(priority=5, max_attempts=2)
    assert changed.opts == {"queue": "q", "priority": 5, "max_attempts": 2}
    assert base.opts == {"queue": "q", "priority": 1}
    assert (changed.task, changed.args, changed.immutable) == ("a", (1,), False)


def test_options_keep_immutability() -> None:
    assert si("a").options(queue="q").immutable


def test_signature_keeps_its_own_copy_of_kwargs_and_opts() -> None:
    kwargs = {"to": "x"}
    opts = {"queue": "q"}
    signature = Signature("a", (), kwargs, opts)
    kwargs["to"] = "y"
    opts["queue"] = "other"
    assert signature.kwargs == {"to": "x"}
    assert signature.opts == {"queue": "q"}
    with pytest.raises(TypeError):
        signature.kwargs["to"] = "z"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"task": ""}, "task name"),
        ({"task": 3}, "task name"),
        ({"args": [1]}, "args must be a tuple"),
        ({"kwargs": [("a", 1)]}, "kwargs must be a mapping"),
        ({"opts": "fast"}, "opts must be a mapping"),
        ({"immutable": 1}, "immutable must be a bool"),
    ],
)
def test_bad_signatures_are_refused(fields: dict[str, Any], complaint: str) -> None:
    values: dict[str, Any] = {"task": "a", "args": (), "kwargs": {}, "opts": {}} | fields
    with pytest.raises(InvalidRequest, match=complaint):
        Signature(**values)


# -- graphs of every shape ------------------------------------------------------


def test_a_single_signature_is_a_one_step_graph() -> None:
    graph = build(s("a", 1, k=2))
    assert graph.steps == (StepSpec(EnqueueRequest("a", (1,), {"k": 2})),)
    assert graph.result == 0


def test_chain_passes_each_result_to_the_next_step() -> None:
    graph = build(chain(s("a", 1), s("b", 2), s("c")))
    assert shape(graph) == [("a", (), None), ("b", (0,), 0), ("c", (1,), 1)]
    assert graph.steps[1].request.args == (2,)
    assert graph.result == 2


def test_immutable_step_waits_but_takes_no_input() -> None:
    graph = build(chain(s("a"), si("b", 7), s("c")))
    assert shape(graph) == [("a", (), None), ("b", (0,), None), ("c", (1,), 1)]
    assert graph.steps[1].request.args == (7,)


def test_group_members_are_independent_and_its_result_is_their_list() -> None:
    graph = build(group(s("a", 1), s("a", 2), s("b")))
    assert shape(graph) == [("a", (), None), ("a", (), None), ("b", (), None)]
    assert graph.result == [0, 1, 2]


def test_single_member_group_still_yields_a_list() -> None:
    assert build(group(s("a"))).result == [0]


def test_chord_callback_gets_the_header_results_in_order() -> None:
    graph = build(chord([s("a", 1), s("a", 2), s("a", 3)], s("total")))
    assert shape(graph)[3] == ("total", (0, 1, 2), [0, 1, 2])
    assert graph.result == 3


def test_chord_accepts_a_group_or_any_iterable_as_header() -> None:
    members = [s("a", 1), s("a", 2)]
    expected = build(chord(members, s("total")))
    assert build(chord(group(*members), s("total"))) == expected
    assert build(chord(iter(members), s("total"))) == expected


def test_immutable_chord_callback_waits_for_every_member() -> None:
    graph = build(chord([s("a"), s("b")], si("done")))
    assert shape(graph)[2] == ("done", (0, 1), None)


def test_step_after_a_group_waits_for_every_member_and_gets_the_list() -> None:
    graph = build(chain(s("a"), group(s("b"), s("c")), s("d")))
    assert shape(graph) == [
        ("a", (), None),
        ("b", (0,), 0),
        ("c", (0,), 0),
        ("d", (1, 2), [1, 2]),
    ]
    assert graph.result == 3


def test_chain_ending_in_a_group_has_the_group_list_as_result() -> None:
    assert build(chain(s("a"), group(s("b"), s("c")))).result == [1, 2]


def test_group_members_that_are_chains_start_from_the_previous_result() -> None:
    graph = build(chain(s("a"), group(chain(s("b"), s("c")), chain(si("d"), s("e")))))
    assert shape(graph) == [
        ("a", (), None),
        ("b", (0,), 0),
        ("c", (1,), 1),
        ("d", (0,), None),
        ("e", (3,), 3),
    ]
    assert graph.result == [2, 4]


def test_chord_header_of_chains_waits_only_for_their_last_steps() -> None:
    graph = build(chord([chain(s("a"), s("b")), s("c")], s("cb")))
    assert shape(graph) == [
        ("a", (), None),
        ("b", (0,), 0),
        ("c", (), None),
        ("cb", (1, 2), [1, 2]),
    ]
    assert graph.result == 3


def test_nested_groups_give_nested_lists() -> None:
    graph = build(chain(group(group(s("a"), s("b")), s("c")), s("d")))
    assert graph.result == 3
    assert shape(graph)[3] == ("d", (0, 1, 2), [[0, 1], 2])
    assert build(group(group(s("a"), s("b")), s("c"))).result == [[0, 1], 2]


def test_a_chord_is_a_chain_of_a_group_and_a_callback() -> None:
    header = [chain(s("a"), s("b")), s("c")]
    as_chord = chain(s("start"), chord(header, s("cb")))
    as_chain = chain(s("start"), chain(group(*header), s("cb")))
    assert build(as_chord) == build(as_chain)


def test_the_graph_example_of_the_docs() -> None:
    graph = build(chain(s("a"), group(s("b"), si("c")), s("d")))
    assert shape(graph) == [
        ("a", (), None),
        ("b", (0,), 0),
        ("c", (0,), None),
        ("d", (1, 2), [1, 2]),
    ]
    assert graph.result == 3


def test_chain_after_a_chord_gets_the_callback_result() -> None:
    graph = build(chain(chord([s("a"), s("b")], s("cb")), s("d")))
    assert shape(graph)[3] == ("d", (2,), 2)
    assert graph.result == 3


def test_chord_callback_may_be_a_workflow() -> None:
    graph = build(chord([s("a"), s("b")], group(s("c"), chain(s("d"), s("e")))))
    assert shape(graph)[2:] == [
        ("c", (0, 1), [0, 1]),
        ("d", (0, 1), [0, 1]),
        ("e", (3,), 3),
    ]
    assert graph.result == [2, 4]


def test_nested_chains_behave_like_one_flat_chain() -> None:
    nested = chain(s("a"), chain(s("b"), chain(s("c"))), s("d"))
    assert build(nested) == build(chain(s("a"), s("b"), s("c"), s("d")))


def test_mixed_workflow_steps_and_result() -> None:
    graph = build(
        chain(
            group(chain(s("a"), s("b")), s("c")),
            chord([s("d"), si("e")], s("f")),
            s("g"),
        )
    )
    assert shape(graph) == [
        ("a", (), None),
        ("b", (0,), 0),
        ("c", (), None),
        ("d", (1, 2), [1, 2]),
        ("e", (1, 2), None),
        ("f", (3, 4), [3, 4]),
        ("g", (5,), 5),
    ]
    assert graph.result == 6


def test_signature_options_reach_the_request_and_the_graph_gets_its_name() -> None:
    graph = build_graph(
        chain(s("a").options(queue="fast", priority=3), s("b")), request_for, name="nightly"
    )
    assert graph.steps[0].request.queue == "fast"
    assert graph.steps[0].request.priority == 3
    assert graph.steps[1].request.queue == "default"
    assert graph.name == "nightly"


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "arguments", "complaint"),
    [
        (chain, (), "chain needs at least one step"),
        (group, (), "group needs at least one member"),
        (chord, ([], s("cb")), "chord header needs at least one member"),
        (chain, (s("a"), "b"), "chain step 1 must be a signature"),
        (group, (s("a"), 3), "group member 1 must be a signature"),
        (group, ([s("a"), s("b")],), "separate arguments, not in a list"),
        (chain, (s("a"), s), r"use a signature: task\.s"),
        (chord, ([s("a"), None], s("cb")), "chord header member 1"),
        (chord, (s("a"), s("cb")), "chord header must be a list"),
        (chord, (chain(s("a")), s("cb")), "chord header must be a list"),
        (chord, (5, s("cb")), "got int"),
        (chord, ([s("a")], [s("cb")]), "chord callback must be a signature"),
        (build, ("a",), "a workflow must be a signature or a chain"),
    ],
)
def test_malformed_workflows_are_refused_with_a_clear_error(
    make: Any, arguments: tuple[Any, ...], complaint: str
) -> None:
    with pytest.raises(InvalidRequest, match=complaint):
        make(*arguments)


def test_a_step_the_request_refuses_refuses_the_whole_graph() -> None:
    with pytest.raises(InvalidRequest, match="not JSON"):
        build(chain(s("a"), s("b", object())))
    with pytest.raises(InvalidRequest, match="idempotency keys are not supported"):
        build(chain(s("a"), s("b").options(idempotency_key="k")))


def test_request_for_must_return_a_request() -> None:
    with pytest.raises(TypeError, match="not EnqueueRequest"):
        build_graph(s("a"), lambda signature: signature)  # type: ignore[arg-type,return-value]


# -- every shape: the graph computes what the nesting means -----------------------


def evaluate(item: Item, before: tuple[Any, ...]) -> Any:
    """The meaning of a workflow, read straight from its nesting.

    ``before`` is ``()`` at the start, else ``(previous element's result,)``.
    A task's "result" records its name and the arguments it got.
    """
    match item:
        case Signature():
            given_args = () if item.immutable else before
            return [item.task, [*given_args, *item.args]]
        case Chain():
            for element in item.elements:
                before = (evaluate(element, before),)
            return before[0]
        case Group():
            return [evaluate(member, before) for member in item.members]
        case Chord():
            header = [evaluate(member, before) for member in item.header]
            return evaluate(item.callback, (header,))
    raise AssertionError(item)


def run_graph(graph: WorkflowGraph) -> Any:
    """Run the steps in order as a driver releases them: input in front of args."""
    results: dict[int, Any] = {}
    for index, step in enumerate(graph.steps):
        assert all(dep < index for dep in step.after)
        given_args = () if step.input is None else (map_ref(step.input, results),)
        results[index] = [step.request.task, [*given_args, *step.request.args]]
    return map_ref(graph.result, results)


def ancestors(graph: WorkflowGraph, index: int) -> set[int]:
    found: set[int] = set()
    for dep in graph.steps[index].after:
        found |= {dep} | ancestors(graph, dep)
    return found


signatures = st.builds(
    Signature,
    task=st.sampled_from(["a", "b", "c"]),
    args=st.tuples(st.integers(0, 9)) | st.just(()),
    immutable=st.booleans(),
)
items: st.SearchStrategy[Item] = st.recursive(
    signatures,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: chain(*xs))
        | st.lists(inner, min_size=1, max_size=3).map(lambda xs: group(*xs))
        | st.tuples(st.lists(inner, min_size=1, max_size=3), inner).map(lambda hc: chord(*hc))
    ),
    max_leaves=12,
)


@given(items)
def test_graph_results_match_the_meaning_of_the_nesting(workflow: Item) -> None:
    graph = build(workflow)
    assert run_graph(graph) == evaluate(workflow, ())


@given(items)
def test_steps_wait_only_for_what_they_need(workflow: Item) -> None:
    graph = build(workflow)
    for index, step in enumerate(graph.steps):
        if step.input is not None:
            assert step.after == tuple(ref_indexes(step.input))
        for dep in step.after:
            redundant = set(step.after) & ancestors(graph, dep)
            assert not redundant, f"step {index} waits for {redundant} twice"
