//! One optimisation step of OSCAR: answer cross-entropy over a batch (run in padded
//! micro-batches of up to [`MICRO_BATCH`] examples whose gradients are accumulated, so memory
//! does not grow with the batch), global grad-norm clipping, AdamW with linear warm-up and
//! decay, separate learning rates for the compressor's backbone, the parts that start from
//! scratch (memory tokens, projector, reranking head) and the generator's LoRA.

use crate::compressor::Compressor;
use crate::example::{TrainExample, ids_tensor};
use crate::llama::{Llama, PromptInput};
// The loss's weights live beside the loss (oscar.rs), so that oscar.rs needs nothing from here.
pub use crate::oscar::LossWeights;
use crate::oscar::{Oscar, answer_cross_entropy};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use std::ops::ControlFlow;

/// Examples per padded forward and backward pass: larger ones pack each weight fewer times
/// but hold more activations.
pub const MICRO_BATCH: usize = 4;

#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Learning rate of the compressor's backbone (pretrained layers).
    pub compressor_lr: f64,
    /// Learning rate of the memory tokens, the projector and the reranking head: they start
    /// from random values, so they may want a larger one than the pretrained backbone.
    pub memory_lr: f64,
    /// Learning rate of the LoRA factors (unused when the generator is frozen).
    pub generator_lr: f64,
    pub weight_decay: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub max_grad_norm: f32,
    /// The loss's terms besides the answer's cross-entropy.
    pub loss: LossWeights,
}

impl TrainSettings {
    /// OSCAR's recipe over `total_steps`: AdamW with weight decay 0.1, 5 % warm-up, clipping
    /// at 1.0, reranking λ 0.05, no distillation; the memory parts learn at the compressor's rate.
    pub fn oscar(compressor_lr: f64, generator_lr: f64, total_steps: usize) -> Self {
        Self {
            compressor_lr,
            memory_lr: compressor_lr,
            generator_lr,
            weight_decay: 0.1,
            warmup_steps: (total_steps / 20).max(1),
            total_steps,
            max_grad_norm: 1.0,
            loss: LossWeights::OSCAR,
        }
    }
}

/// What the optimiser trains: OSCAR (its compressor and its generator's LoRA), or a generator
/// alone (its LoRA: the fine-tuned uncompressed ceiling, on full-text examples).
pub trait Trainable: Sized {
    /// The loss of one micro-batch: `[1]`.
    fn loss(&self, batch: &[&TrainExample], weights: LossWeights) -> Tensor<1>;
    fn compressor(&self) -> Option<&Compressor>;
    fn generator(&self) -> &Llama;
    /// The model with the optimiser's steps applied to its parts.
    fn update(
        self,
        compressor: impl FnOnce(Compressor) -> Compressor,
        generator: impl FnOnce(Llama) -> Llama,
    ) -> Self;
}

impl Trainable for Oscar {
    fn loss(&self, batch: &[&TrainExample], weights: LossWeights) -> Tensor<1> {
        self.training_loss(batch, weights)
    }
    fn compressor(&self) -> Option<&Compressor> {
        Some(&self.compressor)
    }
    fn generator(&self) -> &Llama {
        &self.generator
    }
    fn update(
        self,
        compressor: impl FnOnce(Compressor) -> Compressor,
        generator: impl FnOnce(Llama) -> Llama,
    ) -> Self {
        Self {
            compressor: compressor(self.compressor),
            generator: generator(self.generator),
        }
    }
}

/// A generator alone reads each example's ids whole (`Encoded::full_text`: no chunks, no
/// memory vectors) before its answer.
impl Trainable for Llama {
    fn loss(&self, batch: &[&TrainExample], weights: LossWeights) -> Tensor<1> {
        let device = self.device();
        let prompts = batch
            .iter()
            .map(|ex| {
                let e = &ex.encoded;
                debug_assert!(e.chunks.is_empty(), "a generator alone reads full text");
                let ids = [&e.prefix, &e.suffix, &ex.answer[..ex.answer.len() - 1]].concat();
                PromptInput::tokens(self.embed(ids_tensor(&ids, &device)))
            })
            .collect();
        answer_cross_entropy(self, prompts, batch, weights.distill)
    }
    fn compressor(&self) -> Option<&Compressor> {
        None
    }
    fn generator(&self) -> &Llama {
        self
    }
    fn update(
        self,
        _: impl FnOnce(Compressor) -> Compressor,
        generator: impl FnOnce(Llama) -> Llama,
    ) -> Self {
        generator(self)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    pub compressor_lr: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the loss became {loss} at step {step}; training stopped (the model was not updated)")]
    NonFinite { step: usize, loss: f32 },
    #[error("reading the loss from the device failed at step {step}: {message}")]
    Device { step: usize, message: String },
}

pub struct Trainer {
    pub settings: TrainSettings,
    /// Steps taken so far.
    pub step: usize,
    compressor_optim: ModuleOptimizer,
    memory_optim: ModuleOptimizer,
    generator_optim: ModuleOptimizer,
}

impl Trainer {
    pub fn new(settings: TrainSettings) -> Self {
        // PyTorch's epsilon, not Burn's 1e-5: after clipping, the compressor backbone's
        // gradients are about 7e-5 per weight (RMS; SmolLM2 at the start of pretraining), so
        // 1e-5 would shrink the steps of many of its weights.
        let adamw = AdamWConfig::new()
            .with_weight_decay(settings.weight_decay)
            .with_epsilon(1e-8);
        Self {
            settings,
            step: 0,
            compressor_optim: adamw.init(),
            memory_optim: adamw.init(),
            generator_optim: adamw.init(),
        }
    }

    /// The optimisers' state (AdamW moments and step counts of the compressor, the memory
    /// parts and the LoRA factors) as one safetensors file of three burnpack records, so that
    /// a resumed run takes the same steps as an uninterrupted one. The records key parameters
    /// by id: give the model path-derived ids first ([`crate::checkpoint::with_path_param_ids`]).
    pub fn optimizer_state(&self) -> Result<Vec<u8>, String> {
        let records = self
            .optimizers()
            .map(|(name, optim)| optim.into_bytes().map(|b| (name, b.to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("optimizer state: {e:?}"))?;
        let views = records
            .iter()
            .map(|(name, bytes)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::U8,
                    vec![bytes.len()],
                    bytes,
                )
                .map_err(|e| e.to_string())?;
                Ok((name.to_string(), view))
            })
            .collect::<Result<Vec<_>, String>>()?;
        safetensors::serialize(views, None).map_err(|e| e.to_string())
    }

    /// Restores what [`Self::optimizer_state`] wrote. Parameters the records do not know
    /// start with fresh moments; bytes that are not such a file are refused.
    pub fn load_optimizer_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let mut loaded = Vec::new();
        for (name, optim) in self.optimizers() {
            let view = file
                .tensor(name)
                .map_err(|_| format!("no `{name}` record"))?;
            let record = burn::tensor::Bytes::from_bytes_vec(view.data().to_vec());
            let fresh = optim.clone();
            // Burn's record reader expects its own format and panics on some foreign bytes
            // (a tensor without a parameter id): that panic becomes this error.
            let restored = crate::guard::catch_quietly(|| fresh.from_bytes(record))
                .ok_or_else(|| format!("`{name}` is not an optimizer record"))?
                .map_err(|e| format!("`{name}`: {e:?}"))?;
            loaded.push(restored);
        }
        let mut loaded = loaded.into_iter();
        for optim in [
            &mut self.compressor_optim,
            &mut self.memory_optim,
            &mut self.generator_optim,
        ] {
            *optim = loaded.next().expect("three records");
        }
        Ok(())
    }

    fn optimizers(&self) -> impl Iterator<Item = (&'static str, &ModuleOptimizer)> {
        [
            ("compressor", &self.compressor_optim),
            ("memory", &self.memory_optim),
            ("generator", &self.generator_optim),
        ]
        .into_iter()
    }

    /// Linear warm-up to 1 over `warmup_steps`, then linear decay to 0 at `total_steps`.
    pub fn lr_factor(&self, step: usize) -> f64 {
        let s = &self.settings;
        if step < s.warmup_steps {
            (step + 1) as f64 / s.warmup_steps as f64
        } else {
            let left = s.total_steps.saturating_sub(step) as f64;
            (left / (s.total_steps - s.warmup_steps).max(1) as f64).clamp(0.0, 1.0)
        }
    }

    /// One step over `batch`. On a NaN or infinite loss the model comes back unchanged with
    /// the error. Async because WebGPU reads the loss without blocking; native callers block.
    pub async fn step<M: Trainable>(
        &mut self,
        model: M,
        batch: &[&TrainExample],
    ) -> (M, Result<StepStats, TrainError>) {
        let mut acc_c = GradientsAccumulator::new();
        let mut acc_g = GradientsAccumulator::new();
        let mut total = 0.0f32;
        for part in batch.chunks(MICRO_BATCH) {
            let loss = model.loss(part, self.settings.loss);
            let value = match self.read(loss.clone()).await {
                Ok(v) => v,
                Err(e) => return (model, Err(e)),
            };
            if !value.is_finite() {
                return (
                    model,
                    Err(TrainError::NonFinite {
                        step: self.step + 1,
                        loss: value,
                    }),
                );
            }
            total += value * part.len() as f32;
            let share = part.len() as f32 / batch.len() as f32;
            let mut grads = loss.mul_scalar(share).backward();
            if let Some(c) = model.compressor() {
                acc_c.accumulate(c, GradientsParams::from_module(&mut grads, c));
            }
            let g = model.generator();
            acc_g.accumulate(g, GradientsParams::from_module(&mut grads, g));
        }
        let (mut grads_c, mut grads_g) = (acc_c.grads(), acc_g.grads());
        let norm = match self.read(grad_sq_sum(&model, &grads_c, &grads_g)).await {
            Ok(sq) => sq.sqrt(),
            Err(e) => return (model, Err(e)),
        };
        if !norm.is_finite() {
            return (
                model,
                Err(TrainError::NonFinite {
                    step: self.step + 1,
                    loss: norm,
                }),
            );
        }
        if norm > self.settings.max_grad_norm {
            let factor = self.settings.max_grad_norm / norm;
            if let Some(c) = model.compressor() {
                scale_grads(c, &mut grads_c, factor);
            }
            scale_grads(model.generator(), &mut grads_g, factor);
        }
        let factor = self.lr_factor(self.step);
        let settings = &self.settings;
        let (compressor_optim, memory_optim, generator_optim) = (
            &mut self.compressor_optim,
            &mut self.memory_optim,
            &mut self.generator_optim,
        );
        // Disjoint parameter sets, each with its own optimiser state and learning rate.
        let model = model.update(
            |compressor| {
                let grads_m = take_memory_grads(&compressor, &mut grads_c);
                let compressor =
                    compressor_optim.step(settings.compressor_lr * factor, compressor, grads_c);
                memory_optim.step(settings.memory_lr * factor, compressor, grads_m)
            },
            |generator| match grads_g.is_empty() {
                true => generator,
                false => generator_optim.step(settings.generator_lr * factor, generator, grads_g),
            },
        );
        self.step += 1;
        let stats = StepStats {
            loss: total / batch.len().max(1) as f32,
            grad_norm: norm,
            compressor_lr: self.settings.compressor_lr * factor,
        };
        (model, Ok(stats))
    }
}

/// Why [`Trainer::run`] ended before its last step.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    /// A step failed; the model is as the last good step left it.
    #[error(transparent)]
    Step(TrainError),
    /// The caller's `after` failed.
    #[error("{0}")]
    After(E),
}

impl Trainer {
    /// Optimiser steps from `self.step` until `total`, step s on `batch_of(s)`, calling
    /// `after(trainer, model, batch, stats)` after each: where a caller logs, evaluates,
    /// checkpoints or redraws, and may stop early with `ControlFlow::Break`. The one step loop
    /// of question answering, pretraining, the fine-tuned ceiling and the page. Returns the
    /// model as the last good step left it.
    pub async fn run<'a, M: Trainable, E>(
        &mut self,
        mut model: M,
        total: usize,
        mut batch_of: impl FnMut(usize) -> Vec<&'a TrainExample>,
        mut after: impl AsyncFnMut(
            &Trainer,
            &M,
            &[&'a TrainExample],
            StepStats,
        ) -> Result<ControlFlow<()>, E>,
    ) -> (M, Result<(), RunError<E>>) {
        while self.step < total {
            let batch = batch_of(self.step);
            let (m, result) = self.step(model, &batch).await;
            model = m;
            let stats = match result {
                Ok(stats) => stats,
                Err(e) => return (model, Err(RunError::Step(e))),
            };
            match after(self, &model, &batch, stats).await {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break,
                Err(e) => return (model, Err(RunError::After(e))),
            }
        }
        (model, Ok(()))
    }
}

/// The examples of optimiser step `step`: epochs in a seeded shuffled order, `batch` at a time.
pub fn batch_at(
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

/// The mean answer loss of `examples` (`model` without autodiff), run in [`MICRO_BATCH`]
/// parts; `progress` is called with the examples scored so far.
pub fn mean_answer_loss(
    model: &Oscar,
    examples: &[TrainExample],
    mut progress: impl FnMut(usize),
) -> f32 {
    let mut sum = 0.0;
    let mut done = 0;
    for part in examples.chunks(MICRO_BATCH) {
        let refs: Vec<&TrainExample> = part.iter().collect();
        sum += model.answer_loss(&refs).into_scalar::<f32>() * part.len() as f32;
        done += part.len();
        progress(done);
    }
    sum / examples.len().max(1) as f32
}

impl Trainer {
    async fn read(&self, scalar: Tensor<1>) -> Result<f32, TrainError> {
        scalar
            .into_scalar_async::<f32>()
            .await
            .map_err(|e| TrainError::Device {
                step: self.step + 1,
                message: e.to_string(),
            })
    }
}

struct SqSum<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SqSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Sum of squared gradients over both modules `[1]`, to be read from the device once per step.
fn grad_sq_sum(
    model: &impl Trainable,
    grads_c: &GradientsParams,
    grads_g: &GradientsParams,
) -> Tensor<1> {
    let mut v = SqSum {
        grads: grads_c,
        sum: None,
    };
    if let Some(c) = model.compressor() {
        c.visit(&mut v);
    }
    v.grads = grads_g;
    model.generator().visit(&mut v);
    let device = model.generator().device();
    v.sum.unwrap_or_else(|| Tensor::zeros([1], &device))
}

/// Moves the gradients of the memory tokens, projector and reranking head out of
/// `grads`.
fn take_memory_grads(compressor: &Compressor, grads: &mut GradientsParams) -> GradientsParams {
    let mut taken = Take {
        from: grads,
        to: GradientsParams::new(),
    };
    if let Some(memory) = &compressor.memory {
        taken.visit_float(memory);
    }
    if let Some(projector) = &compressor.projector {
        projector.visit(&mut taken);
    }
    if let Some(head) = &compressor.rerank {
        head.visit(&mut taken);
    }
    if let Some(scorer) = &compressor.pool_scorer {
        taken.visit_float(scorer);
    }
    taken.to
}

struct Take<'a> {
    from: &'a mut GradientsParams,
    to: GradientsParams,
}

impl ModuleVisitor for Take<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            self.to.register(param.id, g);
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f32) {
    module.visit(&mut Scale { grads, factor });
}
