# The Neural Architecture Lab example of Structure Net's README (seed 002), as written there
# but for the import's `src.` prefix (that repository's layout). It tests extrema-driven
# growth against RigL at equal connections (the growth_dynamics category's default
# experiment), 8 seeds, with 4 worker processes; results in ./nal_results/.
from neural_architecture_lab import (
    NeuralArchitectureLab,
    LabConfig,
    Hypothesis,
    HypothesisCategory
)

# Configure lab
config = LabConfig(
    max_parallel_experiments=4,
    results_dir="./nal_results",
    device="cuda"
)

# Create lab
lab = NeuralArchitectureLab(config)

# Define hypothesis
hypothesis = Hypothesis(
    name="extrema_growth_efficiency",
    category=HypothesisCategory.GROWTH_DYNAMICS,
    question="Does extrema-based growth lead to more efficient networks?",
    prediction="Networks grown with extrema detection will achieve higher accuracy with fewer parameters"
)

# Register and test hypothesis
lab.register_hypothesis(hypothesis)
results = lab.run_hypothesis_test(hypothesis.id)

# View insights
insights = lab.extract_insights()
print(lab.generate_report())
