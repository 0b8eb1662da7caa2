"""Beam 2.77's experimental DaskRunner with the fixes this job needs: a shim, selected by the job for
`--runner apache_beam.runners.dask.dask_runner.DaskRunner` (or `DaskRunner`, or this class's full name).

Beam's runner translates a pipeline into dask.bag operations (Create, ParDo, GroupByKey, Flatten;
every other primitive is an identity). Each transform this job uses was run on a real
2-worker cluster (tests/beam_jobs/test_dask.py); what Beam 2.77's translation gets wrong, and
what this shim changes (everything else is Beam's: its overrides, its Create/Flatten/GroupByKey
semantics, its DaskOptions flags):

1. Only the *last* transform's bag is computed: every other branch (a second sink, e.g.
   Parquet beside Redis, or a side output written on its own) silently never runs. (This is
   also why a quick `CombineGlobally(sum)` check can emit nothing: it depends on which leaf
   comes last.) Here every leaf is computed, in one graph, so shared stages run once.
2. Outputs of `DoFn.finish_bundle` are dropped (the bundle's results are taken before
   finish_bundle runs): BatchElements' last batch and bundle-buffering sinks vanish. Here
   they are kept.
3. A multi-output ParDo's consumers all get *every* output, tagged or not. Here each output
   PCollection gets its own tag's elements.
4. Side inputs are computed by a nested `compute()` inside each task that reads them (the
   side input's whole upstream again, per task, and a deadlock risk on single-thread workers).
   Here a side input is one node of the graph, computed once and handed to the tasks.
5. `metrics()` raises NotImplementedError. Here counters are collected per worker process and
   summed at the end (`attempted` values: a task Dask retries counts twice; a worker process
   that dies takes its counts with it — the job's summary says counters are attempted).
   DoFn instances are also reused across bundles of a worker (setup once, as Beam's other
   runners do; teardown when the job ends), so RunInference loads each model once per worker,
   not once per partition.
6. Partitions: a `Create` of few elements becomes one partition, and GroupByKey keeps its
   input's partition count, so the whole job ran in one task on one worker. Here Create and
   GroupByKey use at least `--dask_npartitions` partitions (default: 2 per worker thread).

Not supported (a clear error at launch, as in Beam's runner they silently produce nothing):
`Read` sources (ReadFromText, ReadFromParquet, ...: this job reads files in a ParDo through
FileSystems instead), unbounded/streaming pipelines, windowing other than global, state and
timers, splittable DoFns.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import uuid
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.execution import MetricKey, MetricResult, MetricsContainer
from apache_beam.metrics.metric import MetricResults
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import Receiver
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly, _Read, dask_overrides
from apache_beam.runners.dask.transform_evaluator import get_windowed_value
from apache_beam.runners.runner import PipelineResult, PipelineState

log = logging.getLogger(__name__)

BEAM_NAMES = ("apache_beam.runners.dask.dask_runner.DaskRunner", "DaskRunner")
NAME = "beam_jobs.dask_runner.DaskRunner"
DEFAULT_PARTITIONS_PER_THREAD = 2


# -- worker side: one module-level registry per worker process ---------------------------------------------
_LOCK = threading.Lock()
_IDLE: dict[tuple[str, str], list] = collections.defaultdict(list)  # (job, step) → idle (DoFn, invoker) pairs
_METRICS: dict[str, dict[str, MetricsContainer]] = collections.defaultdict(dict)  # job → step → container
_BUNDLES: dict[str, int] = collections.defaultdict(int)  # job → bundles run in this process


class _Receiver(Receiver):
    def __init__(self, tag, out: list) -> None:
        self.tag, self.out = tag, out

    def receive(self, windowed_value) -> None:
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        self[tag] = _Receiver(tag, self.out)
        return self[tag]


@dataclasses.dataclass
class _Spec:
    """What a task needs to run one bundle of a ParDo (pickled into the graph)."""

    job: str
    step: str
    fn: Any            # the DoFn
    args: tuple
    kwargs: dict
    side_inputs: list  # (view class, view options) per side input, in order
    window_fn: Any


def _make_invoker(spec: _Spec, side_values: tuple):
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
    from apache_beam.transforms.sideinputs import SideInputMap

    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(window_fn=spec.window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    sides = [SideInputMap(view, options, [get_windowed_value(v, None) for v in values])
             for (view, options), values in zip(spec.side_inputs, side_values)]
    invoker = DoFnInvoker.create_invoker(DoFnSignature(spec.fn), handler, context=DoFnContext(spec.step, state=None),
                                         side_inputs=sides, input_args=list(spec.args), input_kwargs=spec.kwargs,
                                         user_state_context=None, bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    return out, invoker


def _run_bundle(items, spec: _Spec, *side_values) -> list:
    """One Dask partition of a ParDo → [(tag, value)], finish_bundle's outputs included."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils import counters

    key = (spec.job, spec.step)
    with _LOCK:
        idle = _IDLE[key]
        pair = idle.pop() if idle else None
        container = _METRICS[spec.job].setdefault(spec.step, MetricsContainer(spec.step))
        _BUNDLES[spec.job] += 1
    if pair is None:  # side inputs are bound at creation: every task of a job gets the same values
        pair = _make_invoker(spec, side_values)
    out, invoker = pair
    out.clear()
    previous = statesampler.get_current_tracker()
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(spec.step, "process", metrics_container=container):
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(get_windowed_value(item, spec.window_fn))
            invoker.invoke_finish_bundle()
    finally:
        statesampler.set_current_tracker(previous)
    result = list(out)
    out.clear()
    with _LOCK:
        _IDLE[key].append(pair)
    return result


def _finish_job(job: str) -> dict:
    """On each worker at the end: tears the job's DoFns down, returns and forgets its counters."""
    with _LOCK:
        pairs = [p for k in [k for k in _IDLE if k[0] == job] for p in _IDLE.pop(k)]
        containers = _METRICS.pop(job, {})
        bundles = _BUNDLES.pop(job, 0)
    for _, invoker in pairs:
        try:
            invoker.invoke_teardown()
        except Exception:  # noqa: BLE001 - teardown is best effort, as in Beam
            log.exception("DoFn teardown failed")
    counters = {}
    for step, c in containers.items():
        for k, v in c.get_cumulative().counters.items():
            counters[(step, k.metric.namespace, k.metric.name)] = v
    return {"pid": os.getpid(), "bundles": bundles, "counters": counters}


def _tagged(tag):
    def pick(pairs):
        return [v for t, v in pairs if t == tag]
    return pick


def _concat(parts) -> list:
    return [x for part in parts for x in part]


def _count(items) -> list:
    return [sum(1 for _ in items)]


# -- client side: the translation ----------------------------------------------------------------------------
class _Visitor(PipelineVisitor):
    def __init__(self, job: str, partitions: int, bag_kwargs: dict) -> None:
        self.job = job
        self.partitions = partitions
        self.bag_kwargs = bag_kwargs
        self.bags: dict[pvalue.PCollection, Any] = {}
        self.consumed: set = set()

    def visit_transform(self, node) -> None:
        import dask.bag as db

        transform = node.transform
        inputs = [self.bags[i] for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        self.consumed.update(i for i in node.inputs if not isinstance(i, pvalue.PBegin))
        self.consumed.update(si.pvalue for si in node.side_inputs)
        cls = type(transform)
        if cls is _Create:
            items = list(transform.values)
            n = self.bag_kwargs.get("npartitions") or self.partitions
            size = self.bag_kwargs.get("partition_size")
            bag = (db.from_sequence(items, partition_size=size) if size else
                   db.from_sequence(items, npartitions=max(1, min(n, len(items)))))
        elif cls is beam.ParDo:
            bag = self._pardo(node, inputs[0])
        elif cls is _GroupByKeyOnly:
            n = max(inputs[0].npartitions, self.bag_kwargs.get("npartitions") or self.partitions)
            bag = inputs[0].groupby(_first, shuffle="tasks", npartitions=n).map(_values)
        elif cls is _Flatten:
            bag = db.concat(inputs)
        elif cls is _Read:
            raise NotImplementedError(f"the Dask runner cannot run Read transforms ({node.full_label}); read files "
                                      "in a ParDo (beam_jobs reads --users through FileSystems)")
        elif isinstance(transform, beam.ParDo) and not inputs:
            raise NotImplementedError(f"the Dask runner cannot run {node.full_label} ({cls.__name__})")
        else:  # Beam's NoOp: WindowInto, GroupAlsoByWindow (GroupByKey already grouped), Reshuffle, Impulse-free
            bag = inputs[0] if inputs else None
        outputs = {tag: pc for tag, pc in node.outputs.items() if isinstance(pc, pvalue.PCollection)}
        if cls is beam.ParDo:
            for tag, pc in outputs.items():
                self.bags[pc] = bag.map_partitions(_tagged(None if tag in (None, "None") else tag))
        else:
            for pc in outputs.values():
                self.bags[pc] = bag

    def _pardo(self, node, bag):
        import dask

        transform = node.transform
        args, kwargs = transform.raw_side_inputs
        main = next(iter(node.main_inputs.values()))
        sides, side_values = [], []
        for si in node.side_inputs:
            sides.append((type(si), si._view_options()))
            side_values.append(dask.delayed(_concat)(self.bags[si.pvalue].to_delayed(optimize_graph=False)))
        spec = _Spec(self.job, node.full_label, transform.fn, tuple(args), dict(kwargs), sides,
                     getattr(main, "windowing", None) and main.windowing.windowfn)
        return bag.map_partitions(_run_bundle, spec, *side_values)

    def leaves(self) -> list:
        return [bag for pc, bag in self.bags.items() if pc not in self.consumed and bag is not None]


def _first(item):
    return item[0]


def _values(item):
    from apache_beam.runners.dask.transform_evaluator import defenestrate

    k, v = item
    return k, [defenestrate(e[1]) for e in v]


class DaskMetrics(MetricResults):
    """Counters summed over the worker processes (attempted; committed is None)."""

    def __init__(self, counters: dict) -> None:
        from apache_beam.metrics.metricbase import MetricName

        self._results = [MetricResult(MetricKey(step, MetricName(ns, name)), None, value)
                         for (step, ns, name), value in sorted(counters.items())]

    def query(self, filter=None):
        return {self.COUNTERS: [r for r in self._results if self.matches(filter, r.key)], self.DISTRIBUTIONS: [],
                self.GAUGES: [], self.STRINGSETS: [], self.BOUNDED_TRIES: [], self.HISTOGRAMS: []}


class DaskResult(PipelineResult):
    def __init__(self, client, futures, job: str, own_client: bool) -> None:
        super().__init__(PipelineState.RUNNING)
        self.client, self.futures, self.job, self.own_client = client, futures, job, own_client
        self.workers: dict[str, dict] = {}  # worker address → {"pid", "bundles"} once finished
        self._metrics = None

    def wait_until_finish(self, duration=None):
        if self._state != PipelineState.RUNNING:
            return self._state
        from dask.distributed import wait

        try:
            wait(self.futures, timeout=None if duration is None else duration / 1000)
            for f in self.futures:
                f.result()  # raises a worker's exception here
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self._finish()
        return self._state

    def _finish(self) -> None:
        try:
            per_worker = self.client.run(_finish_job, self.job)
        except Exception as e:  # noqa: BLE001 - a lost worker: report what is left
            log.warning("could not collect counters from the Dask workers: %s", e)
            per_worker = {}
        totals: dict = collections.Counter()
        for address, info in per_worker.items():
            totals.update(info["counters"])
            self.workers[address] = {"pid": info["pid"], "bundles": info["bundles"]}
        self._metrics = DaskMetrics(dict(totals))
        if self.own_client:
            self.client.close()

    def cancel(self):
        self.client.cancel(self.futures)
        self._state = PipelineState.CANCELLED
        self._finish()
        return self._state

    def metrics(self):
        if self._metrics is None:
            raise RuntimeError("metrics are collected when the job finishes: call wait_until_finish() first")
        return self._metrics


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner (same flags: --dask_client_address, --dask_npartitions, ...) with the fixes above."""

    def run_pipeline(self, pipeline, options):
        import dask.bag as db
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        threads = sum(client.nthreads().values()) or 1
        pipeline.replace_all(dask_overrides())
        visitor = _Visitor(uuid.uuid4().hex, DEFAULT_PARTITIONS_PER_THREAD * threads, bag_kwargs)
        pipeline.visit(visitor)
        # One collection over every leaf: computing them as separate collections re-runs their shared stages
        # once per leaf (seen: the scoring stages three times, for the Parquet, Redis and failed-ids sinks).
        final = db.concat([b.map_partitions(_count) for b in visitor.leaves()])
        futures = [client.compute(final)]
        return DaskResult(client, futures, visitor.job, own_client=True)
