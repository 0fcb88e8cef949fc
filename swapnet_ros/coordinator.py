"""SwapCoordinator: the lifecycle node that owns the shared weight budget and the scheduler.

configure = open (or convert) the model nodes' stores, plan, allocate the arena; activate = serve;
deactivate = stop taking jobs and finish the one in flight; cleanup = free the arena and stores;
shutdown from any state. Model nodes in the same process register with it and submit frames.
"""

from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from swapnet_core import BlockStore, SwapNetError, convert
from swapnet_core.errors import BudgetError
from swapnet_core.scheduler import POLICIES, Scheduler, SchedulerClosed
from swapnet_core.sizes import format_bytes
from swapnet_ros.msg import CoordinatorStatus, ModelStatus
from swapnet_ros.params import accept_integers_as_doubles, mib_to_bytes

MB = 1 << 20


def store_folder(store_dir, ref: str) -> Path:
    """Where a model reference is converted under store_dir."""
    return Path(store_dir) / ref.replace(":", "_").replace("/", "_").replace("?", "_")


class _LogWriter:
    """A file-like sink for tqdm that sends progress lines to a ROS logger."""

    def __init__(self, logger):
        self.logger = logger

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.logger.info(text)

    def flush(self) -> None:
        pass


class SwapCoordinator(LifecycleNode):
    def __init__(self, name: str = "swap_coordinator", **kwargs):
        super().__init__(name, **kwargs)
        self.declare_parameter("total_budget_mb", 512.0, ParameterDescriptor(
            description="weight memory shared by all models, MiB", floating_point_range=[
                FloatingPointRange(from_value=1.0, to_value=1e6, step=0.0)]))
        self.declare_parameter("policy", "edf", ParameterDescriptor(
            description=f"job order: {', '.join(POLICIES)}", read_only=True))
        self.declare_parameter("preemption", False, ParameterDescriptor(
            description="let an urgent job run between two blocks of a long one", read_only=True))
        self.declare_parameter("store_dir", str(Path.home() / ".cache" / "swapnet_ros" / "stores"), ParameterDescriptor(
            description="where model references are converted into block stores on first use", read_only=True))
        self.declare_parameter("status_period_s", 1.0, ParameterDescriptor(
            description="how often ~/status and /diagnostics are published", read_only=True))
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description="configure and activate at start-up (the perception executable acts on it)", read_only=True))
        self.declare_parameter("models", ["detection", "segmentation", "depth"], ParameterDescriptor(
            description="names of the model nodes this process hosts", read_only=True))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        accept_integers_as_doubles(self, ["total_budget_mb"])
        self.clients_by_name: dict = {}
        self._seen: dict[str, tuple] = {}  # per model: (drops, misses, malformed) at the last status
        self._inputs_at_configure: dict[str, dict] = {}  # model nodes' counters: status counts from configure
        self.scheduler: Scheduler | None = None
        self.serving = False
        self._status_pub = self.create_publisher(CoordinatorStatus, "~/status", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.get_parameter("status_period_s").value, self.publish_status)

    # -- model nodes -----------------------------------------------------------------------------
    def register(self, model_node) -> None:
        self.clients_by_name[model_node.get_name()] = model_node

    def submit(self, name: str, x, deadline: float | None):
        """A future for the model's output, or None when not serving (the frame is dropped)."""
        sched = self.scheduler  # once: cleanup, shutdown or an error may clear it on another thread
        if not self.serving or sched is None:
            return None
        try:
            return sched.submit(name, x, deadline)
        except SchedulerClosed:  # closed between the check and the submit: not serving any more
            return None

    def request_budget(self, name: str, budget_bytes: int) -> str | None:
        """Apply a model's new budget at the next job boundary; the reason if refused."""
        sched = self.scheduler
        if sched is None:
            return None  # used at the next configure
        try:
            sched.set_budgets(budgets={name: budget_bytes})
        except (BudgetError, ValueError, KeyError) as e:
            return str(e)
        return None

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "total_budget_mb":
                try:
                    total = mib_to_bytes(p.name, p.value)
                    sched = self.scheduler
                    if sched is not None:  # else checked at the next configure
                        sched.set_budgets(total=total)
                except (BudgetError, ValueError) as e:
                    return SetParametersResult(successful=False, reason=str(e))
                self.get_logger().info(f"total budget {format_bytes(total)}: applied at the next job boundary")
        return SetParametersResult(successful=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        total = int(self.get_parameter("total_budget_mb").value * MB)
        try:
            sched = Scheduler(total, policy=self.get_parameter("policy").value,
                              preemption=self.get_parameter("preemption").value)
            for name, node in self.clients_by_name.items():
                store = self._open_store(node)
                sched.add_model(name, store, node.budget_bytes(), example_input=node.example_input())
            sched.start()
        except (SwapNetError, ValueError, OSError) as e:
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        self.scheduler = sched
        self._inputs_at_configure = {name: node.input_counters() for name, node in self.clients_by_name.items()}
        m = sched.metrics()["models"]
        for name, info in m.items():
            self.get_logger().info(f"{name}: budget {format_bytes(info['budget_bytes'])}, {info['blocks']} blocks, "
                                   f"arena {format_bytes(info['arena_bytes'])}")
        self.get_logger().info(f"configured: total budget {format_bytes(total)}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.serving = True
        self.get_logger().info("active: serving")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.serving = False
        if self.scheduler is not None and not self.scheduler.drain():
            self.get_logger().warning("a job was still running after 30 s")
        self.get_logger().info("inactive: not taking jobs")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: arena and stores freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self.serving = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self.serving = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self, collect: bool = True) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown()
            self.scheduler = None
        if not collect:  # the process is exiting: the OS takes the memory back, a full gc only delays it
            return
        gc.collect()
        try:  # hand freed heap pages back to the OS, so the process's RSS drops
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass

    def _open_store(self, node) -> BlockStore:
        ref = node.get_parameter("model").value
        if Path(ref).is_dir():
            return BlockStore(ref)
        folder = store_folder(self.get_parameter("store_dir").value, ref)
        weights = node.get_parameter("weights").value or None
        try:
            store = BlockStore(folder)
            if store.ref == ref:
                return store
        except SwapNetError:
            pass
        self.get_logger().info(f"converting {ref} into {folder} (first use)")
        started = time.monotonic()
        store = convert(ref, folder, weights=weights, input_spec=node.input_spec(), force=folder.exists(),
                        progress_file=_LogWriter(self.get_logger()))
        self.get_logger().info(f"converted {ref}: {len(store.units)} units, {format_bytes(store.total_bytes)} "
                               f"in {time.monotonic() - started:.1f} s" + (", random weights" if store.random_weights else ""))
        return store

    # -- status ----------------------------------------------------------------------------------
    def publish_status(self) -> None:
        """~/status, and /diagnostics with one entry per model: ERROR while its jobs fail (a bad store;
        the message says why), WARN when frames were dropped, deadlines missed or inputs malformed since
        the last status, else OK."""
        msg = CoordinatorStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.state = self._state_label()
        sched = self.scheduler
        metrics = sched.metrics() if sched is not None else {"models": {}}
        msg.total_budget_bytes = int(metrics.get("total_budget_bytes") or self.get_parameter("total_budget_mb").value * MB)
        msg.arena_bytes = int(metrics.get("arena_bytes", 0))
        diag = DiagnosticArray()
        diag.header.stamp = msg.header.stamp
        for name, node in self.clients_by_name.items():
            m = metrics["models"].get(name, {})
            st = ModelStatus(name=name)
            if not m:
                st.state = "unconfigured"
            elif m.get("failing"):
                st.state = "error"
            else:
                st.state = "serving" if self.serving else "ready"
            st.budget_bytes = int(m.get("budget_bytes", node.budget_bytes()))
            st.min_budget_bytes = int(sched.minimum_budget(name)) if sched is not None else 0
            st.peak_resident_bytes = int(m.get("peak_resident_bytes", 0))
            st.num_blocks = int(m.get("blocks", 0))
            for field in ("p50", "p95", "p99"):
                setattr(st, f"latency_{field}_ms", float(m.get(f"{field}_ms") or 0.0))
            st.jobs_done, st.deadline_misses = int(m.get("jobs_done", 0)), int(m.get("deadline_misses", 0))
            now, base = node.input_counters(), self._inputs_at_configure.get(name, {})
            inputs = {k: v - base.get(k, 0) for k, v in now.items()}  # like the scheduler's, from configure
            st.frames_received, st.lost_before_intake = inputs["frames_received"], inputs["lost_before_intake"]
            st.drops = int(m.get("drops", 0)) + inputs["dropped_inactive"] + inputs["lost_before_intake"]
            st.errors = int(m.get("errors", 0))
            st.malformed_inputs = inputs["malformed_inputs"]
            st.last_error = m.get("last_error", "") or node.last_input_error
            msg.models.append(st)
            diag.status.append(self._diagnostic(st))
        self._status_pub.publish(msg)
        self._diag_pub.publish(diag)

    def _diagnostic(self, st: ModelStatus) -> DiagnosticStatus:
        counts = (st.drops, st.deadline_misses, st.malformed_inputs)
        before = self._seen.get(st.name, (0, 0, 0))
        self._seen[st.name] = counts
        new_drops, new_misses, new_malformed = (max(0, a - b) for a, b in zip(counts, before))
        summary = (f"{st.state}: p99 {st.latency_p99_ms:.0f} ms, {st.jobs_done} jobs, {st.deadline_misses} misses, "
                   f"{st.drops} drops, {st.errors} errors")
        if st.state == "error":
            level, message = DiagnosticStatus.ERROR, f"failing: {st.last_error}"
        elif new_drops or new_misses or new_malformed:
            level = DiagnosticStatus.WARN
            message = (f"{summary} (since the last status: {new_drops} dropped, {new_misses} missed, "
                       f"{new_malformed} malformed)")
        else:
            level, message = DiagnosticStatus.OK, summary
        return DiagnosticStatus(
            level=level, name=f"swapnet/{st.name}", hardware_id=self.get_name(), message=message,
            values=[KeyValue(key=k, value=str(getattr(st, k))) for k in (
                "state", "budget_bytes", "min_budget_bytes", "peak_resident_bytes", "num_blocks", "jobs_done",
                "deadline_misses", "drops", "malformed_inputs", "errors", "frames_received", "lost_before_intake",
                "last_error")])

    def _state_label(self) -> str:
        try:
            return self._state_machine.current_state[1]
        except Exception:  # noqa: BLE001 - rclpy internals differ between distributions
            return "active" if self.serving else ("inactive" if self.scheduler else "unconfigured")
