//! The optimiser schedule and the batches of a run's steps, shared by question answering,
//! pretraining and the fine-tuned ceiling.

use crate::train_args::TrainArgs;
pub(crate) use scaledown_model::training::batch_at;
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
