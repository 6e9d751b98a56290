"""taco_node's parameters: declaration, validation (on_set) and application (post_set).

Mixed into :class:`taco_ros.taco_node.TacoNode`. Every parameter comes from the table in
:mod:`taco_ros.params`. A refused value never takes the node down:

* at start-up (parameter file, ``-p``), a value rclpy refuses (wrong type, out of range) is
  replaced by the default and reported; configure then fails with that message, as it does for a
  value our own rules refuse (choices, device syntax, vocabulary words);
* at run time (``ros2 param set``, the set_vocabulary service), the validator answers every value
  with a result and a reason, whatever its type.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter

from taco_ros import params
from taco_ros.core.contract import PipelineConfig
from taco_ros.core.windows import WindowPolicy, WindowSettings
from taco_ros.diagnostics import NodeStats
from taco_ros.param_declaration import declare_all
from taco_ros.vocabulary_worker import VocabularyWorker

if TYPE_CHECKING:
    from taco_ros.core.pipeline import TacoPipeline

# Parameters whose change goes to the pipeline (live).
PIPELINE_PARAMETERS = ('mode', 'mask_threshold', 'min_component_area', 'top_k', 'audio_context',
                       'silence_rms', 'solver_profile', 'solver_max_steps', 'solver_threads',
                       'max_objects')


class NodeParameters:
    """Parameter handling of TacoNode (a mixin: the node provides the attributes below)."""

    _p: dict[str, Any]
    _lifecycle: str
    _pipeline: TacoPipeline | None
    _policy: WindowPolicy[Any]
    _input_lock: threading.Lock
    _stats: NodeStats
    _vocabulary_worker: VocabularyWorker

    def _declare_parameters(self) -> None:
        problems = declare_all(self)
        self._startup_problems = {text.split(':', 1)[0]: text for text in problems}
        for text in problems:
            self.get_logger().error(text)
        self._p = self._read_all()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    def _read(self, name: str) -> Any:
        return params.normalise(name, self.get_parameter(name).value)

    def _read_all(self) -> dict[str, Any]:
        return {spec.name: self._read(spec.name) for spec in params.PARAMETERS}

    def _configure_problem(self) -> str | None:
        """Why the current parameters cannot configure the node (None when they can)."""
        if self._startup_problems:
            return '; '.join(self._startup_problems.values())
        return params.validate_all(self._p)

    # ------------------------------------------------------------------ on_set / post_set
    def _validate_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """on_set: refuse bad values with a reason; no side effects, never raises."""
        try:
            reason = self._change_problem(changes)
        except Exception as exc:    # a validator answers; it never takes the node down
            reason = f'could not check the new value: {type(exc).__name__}: {exc}'
        return SetParametersResult(successful=reason is None, reason=reason or '')

    def _change_problem(self, changes: list[Parameter]) -> str | None:
        proposed = dict(self._p)
        pipeline = self._pipeline
        for change in changes:
            spec = params.PARAMETERS_BY_NAME.get(change.name)
            if spec is None:
                continue
            value = params.normalise(change.name, change.value)
            reason = params.validate(change.name, value)
            if reason is None and value != self._p.get(change.name):
                reason = self._timing_problem(spec)
            if reason is None and change.name == 'vocabulary' and value and pipeline is not None:
                reason = pipeline.vocabulary_problem(value)
            if reason is not None:
                return reason
            proposed[change.name] = value
        reason = params.validate_together(proposed)
        if reason is None and pipeline is not None:
            changed = {c.name: proposed[c.name] for c in changes if c.name in PIPELINE_PARAMETERS}
            if changed:
                reason = pipeline.update_problem(**self._pipeline_options(changed))
        return reason

    def _timing_problem(self, spec: params.ParamSpec) -> str | None:
        """Why ``spec`` cannot change in the current lifecycle state (None when it can)."""
        if spec.applies == 'configure' and self._lifecycle in ('inactive', 'active'):
            return (f'{spec.name} is applied at configure: deactivate and clean up the node, '
                    'set it, then configure again')
        if spec.applies == 'activate' and self._lifecycle == 'active':
            return f'{spec.name} is applied at activate: deactivate the node, set it, activate'
        return None

    def _apply_parameters(self, changes: list[Parameter]) -> None:
        """post_set: apply accepted values (live ones take effect from the next window)."""
        try:
            self._apply(changes)
        except Exception as exc:  # the values passed validation; report what went wrong
            self.get_logger().error(f'could not apply parameters: {exc}\n{traceback.format_exc()}')
            self._stats.last_error = f'parameters: {exc}'

    def _apply(self, changes: list[Parameter]) -> None:
        pipeline_changes: dict[str, Any] = {}
        vocabulary = None
        for change in changes:
            if change.name not in params.PARAMETERS_BY_NAME:
                continue
            value = self._read(change.name)
            self._p[change.name] = value
            self._startup_problems.pop(change.name, None)
            if change.name in PIPELINE_PARAMETERS:
                pipeline_changes[change.name] = value
            elif change.name == 'vocabulary':
                vocabulary = value
        if params.validate_all(self._p) is None:
            with self._input_lock:
                self._policy.configure(self.window_settings())
        pipeline = self._pipeline
        if pipeline is None:
            return
        if pipeline_changes:
            pipeline.update(**self._pipeline_options(pipeline_changes))
        if vocabulary is not None:    # encoded off the executor; announced on ~/label_info when in use
            self._vocabulary_worker.request(vocabulary)
        if any(c.name == 'mask_threshold' for c in changes):
            self._publish_label_info()

    def _set_vocabulary(self, words: list[str]) -> None:
        """On the vocabulary thread: encode ``words`` (empty: the default list) and announce them."""
        pipeline = self._pipeline
        if pipeline is None:     # cleaned up meanwhile: configure takes the parameter
            return
        started = time.perf_counter()
        pipeline.set_vocabulary(words or None)
        self.get_logger().info(f'vocabulary set: {len(pipeline.vocabulary)} words, encoded in '
                               f'{time.perf_counter() - started:.2f} s, used from the next window')
        self._publish_label_info()

    def _vocabulary_failed(self, exc: Exception) -> None:
        self.get_logger().error(f'could not set the vocabulary: {exc}\n{traceback.format_exc()}')
        self._stats.last_error = f'vocabulary: {exc}'

    def wait_for_vocabulary(self, timeout: float | None = None) -> bool:
        """Wait until every vocabulary set so far is encoded and in use (False on ``timeout``)."""
        return self._vocabulary_worker.wait_idle(timeout)

    # ------------------------------------------------------------------ derived settings
    def window_settings(self) -> WindowSettings:
        """The window policy settings the current parameters describe."""
        return WindowSettings.from_params(self._p)

    @staticmethod
    def _pipeline_options(values: dict[str, Any]) -> dict[str, Any]:
        """Node parameter values → PipelineConfig fields."""
        options = {k: v for k, v in values.items() if k != 'solver_max_steps'}
        if 'solver_max_steps' in values:
            steps = int(values['solver_max_steps'])
            options['solver_overrides'] = {'max_steps': steps} if steps > 0 else {}
        return options

    def pipeline_config(self) -> PipelineConfig:
        """The PipelineConfig the current parameters describe."""
        return params.pipeline_config(self._p)
