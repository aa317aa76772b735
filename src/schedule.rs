//! The optimiser schedule and the batches of a run's steps, shared by question answering,
//! pretraining and the fine-tuned ceiling.

use crate::train_args::TrainArgs;
use scaledown_model::example::TrainExample;
use scaledown_model::training::{LossWeights, TrainSettings, Trainer};

/// AdamW with 5 % warm-up and linear decay over `total` steps, `done` of them already taken.
pub(crate) fn trainer_for(a: &TrainArgs, compressor_lr: f64, total: usize, done: usize) -> Trainer {
    let mut trainer = Trainer::new(TrainSettings {
        loss: LossWeights {
            rerank: a.rerank_weight,
            distill: a.distill_weight,
        },
        ..TrainSettings::oscar(compressor_lr, a.learning_rate, total)
    });
    trainer.step = done;
    trainer
}

/// The examples of optimiser step `step`: epochs in a seeded shuffled order, `batch` at a time.
pub(crate) fn batch_at(
    examples: &[TrainExample],
    step: usize,
    batch: usize,
    seed: u64,
) -> Vec<&TrainExample> {
    let per_epoch = examples.len().div_ceil(batch);
    let epoch = step / per_epoch;
    let order = scaledown_data::split::shuffled_indices(examples.len(), seed + epoch as u64);
    let at = (step % per_epoch) * batch;
    order[at..(at + batch).min(order.len())]
        .iter()
        .map(|&i| &examples[i])
        .collect()
}
