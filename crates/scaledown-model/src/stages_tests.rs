//! The pretraining stage on a tiny random OSCAR: it probes, asks for checkpoints when due,
//! and a run resumed from one of them takes the same steps as an uninterrupted run.

use crate::compressor::{CompressorType, Readout};
use crate::llama::LlamaConfig;
use crate::oscar::Oscar;
use crate::recipe::RunConfig;
use crate::report::TrainState;
use crate::stages::{
    Checkpoint, Every, Pretraining, ResumedOptimizer, RunEvents, Stage, StageError,
};
use crate::tiny;
use crate::training::StepStats;
use burn::prelude::*;
use burn::tensor::read_sync;

const PASSAGES: [&str; 3] = [
    "the red fox runs past the old mill and the blue river turns north where green hills meet",
    "a gray sky hangs over the quiet town and the bells ring twice before the rain",
    "north of the river the mill stands old and red while the fox sleeps in the hills",
];

/// What a stage told its caller.
#[derive(Default)]
struct Recorder {
    started: Vec<(Stage, usize, usize)>,
    steps: usize,
    probes: Vec<usize>,
    checkpoints: Vec<(Checkpoint, Oscar, TrainState, Option<Vec<u8>>)>,
    finished: usize,
}

impl RunEvents for Recorder {
    type Error = StageError;
    fn started(&mut self, stage: Stage, done: usize, total: usize) {
        self.started.push((stage, done, total));
    }
    fn stepped(&mut self, _: Stage, _: &TrainState, stats: &StepStats) {
        assert!(stats.loss.is_finite());
        self.steps += 1;
    }
    fn progress(&mut self, _: &str, done: usize, total: usize) {
        assert!(done <= total);
    }
    fn note(&mut self, _: &str) {}
    fn evaluated(&mut self, _: usize, _: &scaledown_data::EvalRun) {}
    fn probed(&mut self, state: &TrainState, passages: usize) -> Result<(), StageError> {
        assert_eq!(passages, 3);
        self.probes
            .push(state.pretrain_memory_gap.last().unwrap().step);
        Ok(())
    }
    fn checkpoint(
        &mut self,
        at: Checkpoint,
        model: &Oscar,
        state: &TrainState,
        optimizer: Option<Vec<u8>>,
    ) -> Result<(), StageError> {
        self.checkpoints
            .push((at, model.clone(), state.clone(), optimizer));
        Ok(())
    }
    fn finished(&mut self, _: Stage) {
        self.finished += 1;
    }
}

#[test]
fn the_pretraining_stage_probes_checkpoints_and_resumes_step_for_step() {
    let tokenizers = tiny::word_tokenizers(&PASSAGES.join(" "));
    let mut recipe = RunConfig {
        compressor: tiny::compressor_config(CompressorType::NLayers, Readout::Pooled),
        ..RunConfig::default()
    };
    recipe.optimiser.batch_size = 2;
    recipe.optimiser.learning_rate = 3e-3;
    recipe.optimiser.compressor_learning_rate = 3e-3;
    recipe.pretraining.steps = 6;
    let passages: Vec<String> = PASSAGES.iter().map(|p| p.to_string()).collect();
    let every = Every { eval_steps: 2 };
    let stage = Pretraining::new(&recipe, &tokenizers, &passages, &passages, every).unwrap();
    let device = Device::flex();
    device.seed(11);
    let generator = LlamaConfig::tiny(tokenizers.generator.vocab_size()).init(&device);
    let model =
        crate::checkpoint::with_path_param_ids(tiny::oscar_over(generator, &recipe.compressor))
            .train();

    let mut whole = Recorder::default();
    let mut state = TrainState::default();
    read_sync(stage.run(model, &mut state, None, &mut whole)).unwrap();
    assert_eq!(whole.started, vec![(Stage::Pretraining, 0, 6)]);
    assert_eq!((whole.steps, whole.finished), (6, 1));
    assert_eq!(whole.probes, vec![0, 2, 4, 6]);
    let at: Vec<Checkpoint> = whole.checkpoints.iter().map(|c| c.0).collect();
    use Checkpoint::{Pretrained, Pretraining as After};
    assert_eq!(at, vec![After(2), After(4), Pretrained]);
    // The end of its steps: nothing left for a later run, no optimiser state to keep.
    assert!(whole.checkpoints[2].3.is_none());
    let losses = &state.pretrain_losses;
    assert!(losses[5].1 < losses[0].1, "{losses:?}");

    // Resumed from the checkpoint after step 2, with its AdamW state: the same losses.
    let (_, model, mut resumed_state, optimizer) = whole.checkpoints.swap_remove(0);
    let optimizer = optimizer.expect("kept with a step checkpoint");
    let mut resumed = Recorder::default();
    let from = ResumedOptimizer {
        from: "step 2",
        bytes: &optimizer,
    };
    read_sync(stage.run(model.train(), &mut resumed_state, Some(from), &mut resumed)).unwrap();
    assert_eq!(resumed.started, vec![(Stage::Pretraining, 2, 6)]);
    assert_eq!((resumed.steps, resumed.probes.clone()), (4, vec![4, 6]));
    assert_eq!(resumed_state.pretrain_losses, state.pretrain_losses);

    // A run past pretraining comes back at once.
    let mut after = Recorder::default();
    let model = resumed.checkpoints.pop().unwrap().1;
    read_sync(stage.run(model, &mut resumed_state, None, &mut after)).unwrap();
    assert_eq!(
        (after.started.len(), after.steps, after.checkpoints.len()),
        (0, 0, 0)
    );
}
