"""explain.py's flags: which model, which texts, how many integrated-gradients steps, where."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..choices import Split
from ..errors import UserError
from ..files import check_output_dir
from .checks import positive
from .runtime import DeviceArguments


@dataclass
class ExplainArguments(DeviceArguments):
    """explain.py: token attributions of a trained checkpoint's predictions (Paddle)."""

    resume_from_checkpoint: Optional[str] = field(default=None, metadata={
        "required": True, "help": "The trained model (train.py's output_dir or a checkpoint)."})
    text: List[str] = field(default_factory=list, metadata={
        "repeatable": True, "text": True, "help": "A text to explain (repeatable)."})
    input_file: Optional[str] = field(default=None, metadata={
        "help": "A file of texts to explain, one per line (a label column is ignored)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "With --bad_cases: the dataset folder."})
    bad_cases: Optional[Split] = field(default=None, metadata={
        "help": "Explain the split's errors, most confident first (the bad-case report)."})
    max_cases: int = field(default=20, metadata={"help": "Bad cases (or input lines) explained at most."})
    label: Optional[str] = field(default=None, metadata={
        "text": True, "help": "Explain this label's logit instead of the predicted one."})
    steps: int = field(default=32, metadata={
        "help": "Integrated-gradients steps (more: a smaller completeness gap, slower)."})
    output_dir: str = field(default="./explanations", metadata={"help": "Where the HTML and JSON go."})
    device: Optional[str] = field(default="cpu", metadata={"help": "cpu, gpu or gpu:N (GPU N, as --device_id N)."})

    def __post_init__(self):
        positive(self, "max_cases", "steps")
        check_output_dir(self.output_dir)  # before the model loads and the attributions are computed
        if self.bad_cases and not self.data_dir:
            raise UserError("needs --data_dir (the split's gold labels)", "--bad_cases")
        if not (self.text or self.input_file or self.bad_cases):
            raise UserError("nothing to explain: give --text, --input_file or --data_dir with --bad_cases",
                            "explain.py")
        super().__post_init__()
        if self.placement()[0] == "gpu":
            import paddle

            if not paddle.is_compiled_with_cuda():
                raise UserError("asks for a GPU but this Paddle is the CPU build", "--device")

    @property
    def paddle_device(self) -> str:
        """`paddle.set_device`'s name for --device and --device_id."""
        kind, number = self.placement()
        return "cpu" if kind == "cpu" else f"gpu:{number}"
