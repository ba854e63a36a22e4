"""`trl.DPOTrainer` takes a round exported to TRL's preference format (dlma_ray.views.export) from a real 2-round
DLMA run of SmolLM2 and trains one step on it. The export itself: tests/unit/views/test_export.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dlma_ray.views.export import export_round

REAL_RUN = Path(__file__).resolve().parents[1] / "data" / "run_before_layout"  # a real 2-round DLMA run of SmolLM2


def test_trl_dpo_trainer_trains_one_step_on_the_export(tmp_path, tiny_model_dir):
    """trl.DPOTrainer takes the exported folder as is (extra columns included) and makes one optimizer step."""
    pytest.importorskip("trl")
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    export_round(str(REAL_RUN), 1, str(tmp_path / "trl"))  # a real run's pairs, extra columns included
    ds = datasets.load_from_disk(str(tmp_path / "trl")).select(range(4))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                     learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                     dataset_num_proc=None, bf16=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    assert set(trainer.train_dataset.column_names) >= {"prompt_ids", "chosen_ids", "rejected_ids"}
    plain = [r["plain_context"] for r in pq.read_table(REAL_RUN / "round_1" / "pairs").to_pylist()
             if r["split"] == "train"][:4]
    # TRL trains on the context the run trained on, token for token.
    assert trainer.train_dataset["prompt_ids"] == [tok(c, add_special_tokens=False)["input_ids"] for c in plain]
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
