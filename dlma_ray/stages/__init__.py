"""The stages of a round, each blind to the method that calls it:

    common    Round, ActorPool / map_actors, prompt rows, write_table, write_scored, init_ray
    generate  vLLM engine actors -> round_k/generations/ (contrastive pairs, or rows handed in)
    score     scorer actors      -> round_k/pairs/
    train     Ray Train + DeepSpeed with the method's loss -> round_k/policy/
    (evaluate lives in dlma_ray.stages.evaluate: it also serves jobs/evaluate.py on any policy folder)

Every stage returns a `StageResult`; the methods (dlma_ray.methods) choose which stage does what.
"""
