"""SwapCoordinator: the lifecycle node that owns the shared weight budget and the scheduler.

configure = open (or convert) the model nodes' stores, plan, allocate the arena; activate = serve;
deactivate = stop taking jobs and finish the one in flight; cleanup = free the arena and stores;
shutdown from any state. Model nodes in the same process register with it and submit frames.

A model whose store cannot be opened, converted or fitted into the budget is left out of the
configuration (state "error" in the status, with the reason) and the others are served; configure
fails only when no model can be served. The lifecycle services sit in a reentrant callback group and
the status timer in a group of its own, so with a multi-threaded executor `get_state`, parameters and
the status (conversion progress included) are answered while a long configure converts stores.
"""

from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import threading

from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, TransitionCallbackReturn
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

from swapnet_core import BlockStore, SwapNetError, convert
from swapnet_core.device import DEVICE_CHOICES, describe_device, resolve_device
from swapnet_core.errors import BudgetError, StoreMismatchError
from swapnet_core.identity import identity_mismatch, weights_summary
from swapnet_core.scheduler import POLICIES, Scheduler, SchedulerClosed
from swapnet_core.sizes import format_bytes
from swapnet_ros.msg import CoordinatorStatus, ModelStatus
from swapnet_ros.params import accept_integers_as_doubles, mib_to_bytes, on_parameters

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
        # LifecycleNode.__init__ gives its services the node's default (mutually exclusive) group, in
        # which get_state would wait for a configure in progress: build it as it does, with our group
        Node.__init__(self, name, **kwargs)
        LifecycleNodeMixin.__init__(self, enable_communication_interface=True, callback_group=ReentrantCallbackGroup())
        self._refuse_invalid_transitions()
        self.declare_parameter("total_budget_mb", 512.0, ParameterDescriptor(
            description="weight memory shared by all models, MiB", floating_point_range=[
                FloatingPointRange(from_value=1.0, to_value=1e6, step=0.0)]))
        self.declare_parameter("policy", "edf", ParameterDescriptor(
            description=f"job order: {', '.join(POLICIES)}", read_only=True))
        self.declare_parameter("device", "auto", ParameterDescriptor(
            description=f"where the models run: {DEVICE_CHOICES} (auto = the first CUDA device if there is one, "
                        f"else the CPU); checked at configure", read_only=True))
        self.declare_parameter("preemption", False, ParameterDescriptor(
            description="let an urgent job run between two blocks of a long one", read_only=True))
        self.declare_parameter("store_dir", str(Path.home() / ".cache" / "swapnet_ros" / "stores"), ParameterDescriptor(
            description="where model references are converted into block stores on first use", read_only=True))
        self.declare_parameter("status_period_s", 1.0, ParameterDescriptor(
            description="how often ~/status and /diagnostics are published, seconds", read_only=True,
            floating_point_range=[FloatingPointRange(from_value=0.05, to_value=3600.0, step=0.0)]))
        self.declare_parameter("autostart", True, ParameterDescriptor(
            description="configure and activate at start-up (the perception executable acts on it)", read_only=True))
        self.declare_parameter("models", ["detection", "segmentation", "depth"], ParameterDescriptor(
            description="names of the model nodes this process hosts", read_only=True))
        on_parameters(self, self._check_parameters, self._apply_parameters)
        accept_integers_as_doubles(self, ["total_budget_mb"])
        self.clients_by_name: dict = {}
        self.last_error = ""  # why the last transition failed, until one succeeds
        self.device_label = ""  # where the models run, once configured
        self.unavailable: dict[str, str] = {}  # models left out of the configuration, and why
        self.preparing: dict[str, tuple[str, float]] = {}  # model -> (what configure does now, fraction done)
        self._seen: dict[str, tuple] = {}  # per model: (drops, misses, malformed) at the last status
        self._worker_errors_seen = 0
        self._inputs_at_configure: dict[str, dict] = {}  # model nodes' counters: status counts from configure
        self.scheduler: Scheduler | None = None
        self.serving = False
        self._status_pub = self.create_publisher(CoordinatorStatus, "~/status", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._status_lock = threading.Lock()  # the timer and a transition may publish at once
        self.create_timer(self.get_parameter("status_period_s").value, self.publish_status,
                          callback_group=MutuallyExclusiveCallbackGroup())

    def _refuse_invalid_transitions(self) -> None:
        """An out-of-order change_state (activate while active) must answer success=False. Jazzy's rclpy
        lets the state machine's RCLError escape the service callback instead, which stops the
        executor and with it the process; Kilted's answers False itself."""
        service = self._service_change_state
        handle = service.callback

        def change_state(request, response):
            try:
                return handle(request, response)
            except _rclpy.RCLError as e:
                self.get_logger().warning(f"transition {request.transition.id or request.transition.label!r} "
                                          f"refused in state {self._state_label()}: {e}")
                response.success = False
                return response

        service.callback = change_state

    # -- model nodes -----------------------------------------------------------------------------
    def register(self, model_node) -> None:
        self.clients_by_name[model_node.get_name()] = model_node

    def submit(self, name: str, x, deadline: float | None):
        """A future for the model's output, or None when not serving (the frame is dropped). The
        scheduler itself refuses jobs once deactivate has drained it, so no frame checked here just
        before a deactivate can run after it."""
        sched = self.scheduler  # once: cleanup, shutdown or an error may clear it on another thread
        if not self.serving or sched is None or name in self.unavailable:
            return None
        try:
            return sched.submit(name, x, deadline)
        except SchedulerClosed:  # drained or closed between the check and the submit: not serving
            return None

    def check_budget(self, name: str, budget_bytes: int) -> str | None:
        """Why a model's new budget would be refused, or None (changes nothing)."""
        return self._budget_refusal(budgets={name: budget_bytes})

    def request_budget(self, name: str, budget_bytes: int) -> str | None:
        """Apply a model's new budget at the next job boundary; the reason if refused."""
        return self._budget_refusal(budgets={name: budget_bytes}, apply=True)

    def _budget_refusal(self, total: int | None = None, budgets: dict | None = None, apply: bool = False) -> str | None:
        sched = self.scheduler
        budgets = {n: b for n, b in (budgets or {}).items() if n not in self.unavailable}
        if sched is None or (total is None and not budgets):
            return None  # used at the next configure
        try:
            (sched.set_budgets if apply else sched.check_budgets)(total=total, budgets=budgets)
        except (BudgetError, ValueError, KeyError) as e:
            return str(e)
        return None

    def _check_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "total_budget_mb":
                try:
                    reason = self._budget_refusal(total=mib_to_bytes(p.name, p.value))
                except ValueError as e:
                    reason = str(e)
                if reason:
                    return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        for p in params:
            if p.name == "total_budget_mb":
                total = mib_to_bytes(p.name, p.value)
                reason = self._budget_refusal(total=total, apply=True)
                if reason:  # another budget was applied between the check and now
                    self.get_logger().error(f"total budget {format_bytes(total)} accepted but not applied: {reason}")
                else:
                    self.get_logger().info(f"total budget {format_bytes(total)}: applied at the next job boundary")

    # -- lifecycle -------------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        total = int(self.get_parameter("total_budget_mb").value * MB)
        sched = None
        self.unavailable = {}
        try:
            device = resolve_device(self.get_parameter("device").value)
            sched = Scheduler(total, policy=self.get_parameter("policy").value,
                              preemption=self.get_parameter("preemption").value, device=device)
            for name, node in self.clients_by_name.items():
                try:
                    store = self._open_store(node)
                    node.bind_store(store)  # its class names, normalisation and output adapter
                    self.get_logger().info(f"{name}: {store.ref} with {weights_summary(store.manifest.get('weights', {}))}")
                    sched.add_model(name, store, node.budget_bytes(), example_input=node.example_input())
                except Exception as e:  # noqa: BLE001 - that model only (a store, a constructor): serve the others
                    self.unavailable[name] = f"{type(e).__name__}: {e}"
                    self.get_logger().error(f"{name}: not served: {e}")
                self.preparing.pop(name, None)
            if not sched.models:
                raise SwapNetError("no model could be configured (each one's reason is above)")
            self.preparing.update({name: ("planning", 0.0) for name in sched.models})  # profiling on first use
            sched.start()
        except (SwapNetError, ValueError, OSError, MemoryError, RuntimeError) as e:
            self.last_error = f"configure failed: {e}"
            self.get_logger().error(self.last_error)
            if sched is not None:  # the status says why of each model, until the next configure
                for name, m in sched.metrics()["models"].items():
                    self.unavailable.setdefault(name, m["last_error"] or f"{type(e).__name__}: {e}")
                sched.shutdown()  # the arena now, not at the next cyclic collection
            self._release()
            return TransitionCallbackReturn.FAILURE
        finally:
            self.preparing.clear()
        sched.drain(timeout=0)  # configured, not active: frames are refused until activate
        self.scheduler = sched
        self.last_error, self.device_label = "", describe_device(device)
        self._inputs_at_configure = {name: node.input_counters() for name, node in self.clients_by_name.items()}
        m = sched.metrics()["models"]
        for name, info in m.items():
            self.get_logger().info(f"{name}: budget {format_bytes(info['budget_bytes'])}, {info['blocks']} blocks, "
                                   f"arena {format_bytes(info['arena_bytes'])}")
        self.get_logger().info(f"configured: total budget {format_bytes(total)} on {self.device_label}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.scheduler.resume()
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
        sched, self.scheduler = self.scheduler, None
        if sched is not None:
            sched.shutdown()
        if not collect:  # the process is exiting: the OS takes the memory back, a full gc only delays it
            return
        gc.collect()
        try:  # hand freed heap pages back to the OS, so the process's RSS drops
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass

    def _open_store(self, node) -> BlockStore:
        """The node's store: its `model` folder as it is, or the cached conversion of its model reference
        when that holds the same weights, dtype and trace input, else a fresh conversion."""
        ref = node.get_parameter("model").value
        weights = node.get_parameter("weights").value or None
        dtype = node.get_parameter("dtype").value
        if Path(ref).is_dir():  # a store the user converted: its own weights and dtype, unless they say otherwise
            store = BlockStore(ref)
            why = identity_mismatch(store, store.ref, weights=weights, dtype=dtype) if weights else (
                None if store.dtype == dtype else f"it stores {store.dtype}, not {dtype}")
            if why:
                raise StoreMismatchError(f"{node.get_name()}: the store {ref} is not what its parameters ask for: "
                                         f"{why} (re-convert it, or leave weights empty to serve the store's own)")
            return store
        folder = store_folder(self.get_parameter("store_dir").value, ref)
        why = "first use"
        try:
            store = BlockStore(folder)
            why = identity_mismatch(store, ref, weights=weights, input_spec=node.input_spec(), dtype=dtype,
                                    slicing="auto")
            if why is None:
                return store
        except SwapNetError as e:
            if folder.exists():
                why = f"the cached store is unusable: {e}"
        self.get_logger().info(f"converting {ref} into {folder} ({why})")
        started = time.monotonic()
        name = node.get_name()
        self.preparing[name] = ("converting", 0.0)

        def progress(done: int, total: int) -> None:
            self.preparing[name] = ("converting", done / total if total else 0.0)

        store = convert(ref, folder, weights=weights, input_spec=node.input_spec(), force=folder.exists(),
                        progress_file=_LogWriter(self.get_logger()), dtype=dtype, on_progress=progress)
        self.get_logger().info(f"converted {ref}: {len(store.units)} units, {format_bytes(store.total_bytes)} "
                               f"in {time.monotonic() - started:.1f} s" + (", random weights" if store.random_weights else ""))
        return store

    # -- status ----------------------------------------------------------------------------------
    def publish_status(self) -> None:
        """~/status, and /diagnostics with one entry per model: ERROR while its jobs fail or it is left
        out of the configuration (a bad store; the message says why), WARN when frames were dropped,
        deadlines missed or inputs malformed since the last status, else OK; and one for the scheduler's
        worker (ERROR if it stopped, WARN after a fault it survived)."""
        with self._status_lock:
            self._publish_status()

    def _publish_status(self) -> None:
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
            preparing, left_out = self.preparing.get(name), self.unavailable.get(name)
            if preparing is not None:
                st.state, st.progress = preparing
            elif left_out is not None:
                st.state = "error"
            elif not m:
                st.state = "unconfigured"
            elif m.get("failing") or metrics.get("worker_alive") is False:
                st.state = "error"
            else:
                st.state = "serving" if self.serving else "ready"
            st.budget_bytes = int(m.get("budget_bytes", node.budget_bytes()))
            st.min_budget_bytes = int(sched.minimum_budget(name)) if m else 0
            st.peak_resident_bytes = int(m.get("peak_resident_bytes", 0))
            st.num_blocks = int(m.get("blocks", 0))
            for field in ("p50", "p95", "p99"):
                setattr(st, f"latency_{field}_ms", float(m.get(f"{field}_ms") or 0.0))
            st.jobs_done, st.deadline_misses = int(m.get("jobs_done", 0)), int(m.get("deadline_misses", 0))
            now, base = node.input_counters(), self._inputs_at_configure.get(name, {})
            inputs = {k: v - base.get(k, 0) for k, v in now.items()}  # like the scheduler's, from configure
            st.frames_received, st.lost_before_intake = inputs["frames_received"], inputs["lost_before_intake"]
            st.drops = int(m.get("drops", 0)) + inputs["dropped_inactive"] + inputs["lost_before_intake"]
            reasons = m.get("drops_by_reason", {})
            st.drops_replaced, st.drops_late = int(reasons.get("replaced", 0)), int(reasons.get("late", 0))
            st.errors = int(m.get("errors", 0))
            st.malformed_inputs = inputs["malformed_inputs"]
            st.last_error = left_out or m.get("last_error", "") or node.last_input_error
            if metrics.get("worker_alive") is False:
                st.last_error = f"the scheduler's worker stopped: {metrics.get('last_worker_error') or 'no error recorded'}"
            msg.models.append(st)
            diag.status.append(self._diagnostic(st))
        msg.device, msg.last_error = self.device_label, self.last_error
        msg.worker_errors = int(metrics.get("worker_errors", 0))
        msg.last_worker_error = metrics.get("last_worker_error", "")
        diag.status.append(self._worker_diagnostic(metrics))
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
                "deadline_misses", "drops", "drops_replaced", "drops_late", "malformed_inputs", "errors", "frames_received", "lost_before_intake",
                "last_error")])

    def _worker_diagnostic(self, metrics: dict) -> DiagnosticStatus:
        errors = int(metrics.get("worker_errors", 0))
        new, self._worker_errors_seen = errors - self._worker_errors_seen, errors
        if metrics.get("worker_alive") is False:
            level, message = DiagnosticStatus.ERROR, f"stopped: {metrics.get('last_worker_error') or 'no error recorded'}"
        elif new > 0:
            level, message = DiagnosticStatus.WARN, f"{new} fault(s) survived since the last status: {metrics['last_worker_error']}"
        else:
            level, message = DiagnosticStatus.OK, "running" if self.scheduler is not None else "not configured"
        return DiagnosticStatus(level=level, name="swapnet/scheduler", hardware_id=self.get_name(), message=message,
                                values=[KeyValue(key="worker_errors", value=str(errors))])

    def _state_label(self) -> str:
        try:
            return self._state_machine.current_state[1]
        except Exception:  # noqa: BLE001 - rclpy internals differ between distributions
            return "active" if self.serving else ("inactive" if self.scheduler else "unconfigured")
