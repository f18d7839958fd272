"""The Neural Architecture Lab (seed 002's lab, ``import neural_architecture_lab``):
hypotheses about architectures tested against a named control arm, paired by seed, with
statistics that cannot cheat; every experiment an Optuna trial (embedded journal file, or a
PostgreSQL study shared by workers on several machines); a killed run resumes; insights,
follow-ups and a markdown report. ``morpho lab run FILE`` runs a hypothesis file.
See docs/lab.md."""

from .analysis import FOLLOW_UP_RULE, VERDICTS, compare_arm, verdict
from .config import DIRECTIONS, Hypothesis, HypothesisCategory, LabConfig
from .experiments import (
    CATEGORY_DEFAULTS,
    EXPERIMENTS,
    Experiment,
    RunContext,
    get_experiment,
    register_experiment,
)
from .lab import NeuralArchitectureLab, dump_lab_file
from .spec import read_lab_file

__all__ = ["CATEGORY_DEFAULTS", "DIRECTIONS", "EXPERIMENTS", "Experiment", "FOLLOW_UP_RULE",
           "Hypothesis", "HypothesisCategory", "LabConfig", "NeuralArchitectureLab",
           "RunContext", "VERDICTS", "compare_arm", "dump_lab_file", "get_experiment",
           "read_lab_file", "register_experiment", "verdict"]
