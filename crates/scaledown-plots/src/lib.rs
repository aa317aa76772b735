//! The PNG figures of a training run: metrics before/after with the uncompressed baseline,
//! training curves, latency (uncompressed vs compressed), and the pretraining loss when the
//! compressor was pretrained, and the scaling curve of `scaledown pretrain`. Drawn with a
//! bundled font, so that they look the same on machines without fonts.

use plotters::prelude::*;
use scaledown_data::{EvalRun, Scores};
use scaledown_model::report::{PretrainProbe, Report, TrainState};
use std::path::Path;
use std::sync::Once;

const BEFORE: RGBColor = RGBColor(158, 173, 200);
const AFTER: RGBColor = RGBColor(31, 96, 196);
const BASELINE: RGBColor = RGBColor(230, 126, 34);
const CEILING: RGBColor = RGBColor(46, 139, 87);
const METRICS: [&str; 4] = ["Exact match", "F1", "ROUGE-L", "Match"];

fn fonts() {
    static ONCE: Once = Once::new();
    // Drawn with a bundled font, so plots look the same on machines without fonts.
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// A figure that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, PlotError>;

fn err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError {
        path: path.display().to_string(),
        message: format!("{e:?}"),
    }
}

pub fn write_all(
    out: &Path,
    report: &Report,
    baseline: &EvalRun,
    before: &EvalRun,
    after: &EvalRun,
    ceiling: Option<&EvalRun>,
) -> Result<()> {
    fonts();
    before_after(
        &out.join("before_after_comparison.png"),
        baseline,
        before,
        after,
        ceiling,
    )?;
    training_curves(&out.join("training_curves.png"), report)?;
    if !report.training.pretrain_losses.is_empty() {
        pretraining_curve(&out.join("pretraining_curve.png"), &report.training)?;
    }
    speed(&out.join("speed_comparison.png"), baseline, before, after)?;
    Ok(())
}

fn values(r: &EvalRun) -> [f64; 4] {
    let s = r.scores;
    [s.exact_match, s.f1, s.rouge_l, s.match_accuracy].map(|v| 100.0 * v)
}

/// Scores before and after training beside the uncompressed generator's, and beside the
/// fine-tuned uncompressed ceiling's when there is one.
fn before_after(
    path: &Path,
    baseline: &EvalRun,
    before: &EvalRun,
    after: &EvalRun,
    ceiling: Option<&EvalRun>,
) -> Result<()> {
    let e = err(path);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (b, a, u) = (values(before), values(after), values(baseline));
    let mut groups = vec![
        (b, BEFORE, "before training"),
        (a, AFTER, "after training"),
        (u, BASELINE, "uncompressed"),
    ];
    if let Some(c) = ceiling {
        groups.push((values(c), CEILING, "uncompressed, fine-tuned"));
    }
    let top = groups.iter().flat_map(|g| g.0).fold(10.0, f64::max) * 1.45;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Before vs after training (uncompressed generator beside)",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..3.5f64, 0f64..top)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            METRICS
                .get(x.round() as usize)
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .y_desc("score (%)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(&e)?;
    let w = 0.75 / groups.len() as f64;
    let middle = (groups.len() as f64 - 1.0) / 2.0;
    for (k, (vals, color, name)) in groups.iter().copied().enumerate() {
        let offset = (k as f64 - middle) * w;
        chart
            .draw_series(vals.iter().enumerate().map(|(i, &v)| {
                let x = i as f64 + offset;
                Rectangle::new(
                    [(x - w / 2.0 + 0.01, 0.0), (x + w / 2.0 - 0.01, v)],
                    color.filled(),
                )
            }))
            .map_err(&e)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(vals.iter().enumerate().map(|(i, &v)| {
                Text::new(
                    format!("{v:.1}"),
                    (i as f64 + offset - 0.36 * w, v + top * 0.01),
                    ("sans-serif", 13),
                )
            }))
            .map_err(&e)?;
    }
    // % change from before to after, above each group.
    chart
        .draw_series((0..4).map(|i| {
            let change = if b[i] > 0.0 {
                format!("{:+.0}%", 100.0 * (a[i] - b[i]) / b[i])
            } else {
                format!("{:+.1} pts", a[i] - b[i])
            };
            let y = groups.iter().map(|g| g.0[i]).fold(0.0, f64::max) + top * 0.07;
            Text::new(
                change,
                (i as f64 - 0.12, y),
                ("sans-serif", 16).into_font().style(FontStyle::Bold),
            )
        }))
        .map_err(&e)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

fn training_curves(path: &Path, report: &Report) -> Result<()> {
    let e = err(path);
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (left, right) = root.split_horizontally(600);
    let losses = &report.training.losses;
    let last = losses.last().map_or(1, |l| l.0).max(1) as f64;
    let ceiling: Vec<Curve> = report
        .finetuned_ceiling
        .iter()
        .map(|c| Curve {
            label: "uncompressed, fine-tuned (EMA 0.9)",
            points: smoothed(&c.losses),
            color: CEILING,
        })
        .collect();
    loss_chart(
        &left,
        "Training loss (answer cross-entropy)",
        losses,
        &ceiling,
    )
    .map_err(err(path))?;

    // Eval metrics over steps, starting with the before-training evaluation at step 0.
    let mut points = vec![(0usize, report.before.scores)];
    points.extend(report.training.evals.iter().map(|p| (p.step, p.scores)));
    let mut chart = ChartBuilder::on(&right)
        .caption("Eval metrics over training", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..last, 0f64..100f64)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("score (%)")
        .draw()
        .map_err(&e)?;
    let colors = [
        RGBColor(192, 57, 43),
        AFTER,
        RGBColor(39, 174, 96),
        BASELINE,
    ];
    for (k, name) in METRICS.iter().enumerate() {
        let color = colors[k];
        let series: Vec<(f64, f64)> = points
            .iter()
            .map(|(s, sc)| {
                (
                    *s as f64,
                    100.0 * [sc.exact_match, sc.f1, sc.rouge_l, sc.match_accuracy][k],
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(&e)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                series
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(&e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

fn speed(path: &Path, baseline: &EvalRun, before: &EvalRun, after: &EvalRun) -> Result<()> {
    let e = err(path);
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (left, right) = root.split_horizontally(650);
    let ms = |r: &EvalRun| r.predictions.iter().map(|p| p.ms).collect::<Vec<_>>();
    let (u, c) = (ms(baseline), ms(after));
    let max_ms = u.iter().chain(&c).cloned().fold(1.0, f64::max) * 1.05;
    let bins = 20usize;
    let width = max_ms / bins as f64;
    let hist = |v: &[f64]| {
        let mut h = vec![0u32; bins];
        for x in v {
            h[((x / width) as usize).min(bins - 1)] += 1;
        }
        h
    };
    let (hu, hc) = (hist(&u), hist(&c));
    let top = hu.iter().chain(&hc).cloned().max().unwrap_or(1) as f64 * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("Latency per query", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..max_ms, 0f64..top)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc("ms per query")
        .y_desc("queries")
        .draw()
        .map_err(&e)?;
    for (h, color, name, shift) in [
        (&hu, BASELINE, "uncompressed", 0.0),
        (&hc, AFTER, "compressed (after training)", 0.5),
    ] {
        chart
            .draw_series(
                h.iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, &n)| {
                        let x0 = i as f64 * width + shift * width;
                        Rectangle::new([(x0, 0.0), (x0 + width * 0.5, n as f64)], color.filled())
                    }),
            )
            .map_err(&e)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;

    let rows = [
        (baseline, BASELINE, "uncompressed"),
        (before, BEFORE, "before"),
        (after, AFTER, "after"),
    ];
    let top = rows.iter().map(|r| r.0.timing.p95_ms).fold(1.0, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(&right)
        .caption("Mean ms per query (whiskers: p50, p95)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5f64..2.5f64, 0f64..top)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| {
            rows.get(x.round() as usize)
                .map(|r| r.2.to_string())
                .unwrap_or_default()
        })
        .y_desc("ms")
        .draw()
        .map_err(&e)?;
    for (i, (r, color, _)) in rows.iter().enumerate() {
        let x = i as f64;
        let t = r.timing;
        chart
            .draw_series([Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, t.mean_ms)],
                color.filled(),
            )])
            .map_err(&e)?;
        chart
            .draw_series([
                PathElement::new(vec![(x, t.p50_ms), (x, t.p95_ms)], BLACK.stroke_width(2)),
                PathElement::new(
                    vec![(x - 0.08, t.p95_ms), (x + 0.08, t.p95_ms)],
                    BLACK.stroke_width(2),
                ),
                PathElement::new(
                    vec![(x - 0.08, t.p50_ms), (x + 0.08, t.p50_ms)],
                    BLACK.stroke_width(2),
                ),
            ])
            .map_err(&e)?;
        chart
            .draw_series([Text::new(
                format!("{:.0} ms", t.mean_ms),
                (x - 0.2, t.p95_ms + top * 0.03),
                ("sans-serif", 15),
            )])
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// (step, loss) smoothed by the exponential moving average that the page draws too.
fn smoothed(losses: &[(usize, f32)]) -> Vec<(f64, f64)> {
    let raw: Vec<f64> = losses.iter().map(|&(_, l)| l as f64).collect();
    let steps = losses.iter().map(|&(s, _)| s as f64);
    steps.zip(scaledown_data::smoothed(&raw)).collect()
}

/// A line drawn beside a loss curve, point by point.
struct Curve<'a> {
    label: &'a str,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

fn loss_chart(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    caption: &str,
    losses: &[(usize, f32)],
    others: &[Curve],
) -> std::result::Result<(), String> {
    let last = losses.last().map_or(1, |l| l.0).max(1) as f64;
    let max_loss = losses
        .iter()
        .map(|l| l.1 as f64)
        .chain(others.iter().flat_map(|c| c.points.iter().map(|p| p.1)))
        .fold(0.1, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..last, 0f64..max_loss)
        .map_err(|e| format!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| format!("{e:?}"))?;
    chart
        .draw_series(LineSeries::new(
            losses.iter().map(|&(s, l)| (s as f64, l as f64)),
            BEFORE.stroke_width(1),
        ))
        .map_err(|e| format!("{e:?}"))?
        .label("raw")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BEFORE));
    chart
        .draw_series(LineSeries::new(smoothed(losses), AFTER.stroke_width(3)))
        .map_err(|e| format!("{e:?}"))?
        .label("smoothed (EMA 0.9)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], AFTER.stroke_width(3)));
    for c in others {
        let color = c.color;
        chart
            .draw_series(LineSeries::new(c.points.clone(), color.stroke_width(3)))
            .map_err(|e| format!("{e:?}"))?
            .label(c.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| format!("{e:?}"))?;

    Ok(())
}

/// The pretraining loss (auto-encoding / continuation cross-entropy) over its steps, with the
/// memory gap on held-out passages: their auto-encoding loss from their own memory and from
/// another passage's (apart once the generator reads its memory).
fn pretraining_curve(path: &Path, training: &TrainState) -> Result<()> {
    let root = BitMapBackend::new(path, (700, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let gap = &training.pretrain_memory_gap;
    let curve = |label, color, of: fn(&PretrainProbe) -> f32| Curve {
        label,
        points: gap.iter().map(|g| (g.step as f64, of(g) as f64)).collect(),
        color,
    };
    let others = [
        curve("held-out, own memory", CEILING, |g| g.own),
        curve("held-out, another's memory", BASELINE, |g| g.other),
    ];
    loss_chart(
        &root,
        "Compressor pretraining loss",
        &training.pretrain_losses,
        &others,
    )
    .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

/// The scaling curve of pretraining, against windows seen (log scale): on the left the memory
/// gap (held-out auto-encoding loss from another passage's memory minus from its own) and,
/// when questions were probed, the same for the gold answers (memory use); on the right the
/// held-out questions' F1 and match. The values before pretraining are the flat lines.
pub fn scaling_curve(path: &Path, probes: &[PretrainProbe]) -> Result<()> {
    fonts();
    let e = err(path);
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (left, right) = root.split_horizontally(600);
    let gap = |p: &PretrainProbe| (p.other - p.own) as f64;
    let answer_gap = |p: &PretrainProbe| {
        p.qa.as_ref()
            .map(|q| (q.memory_use.other_documents_loss - q.memory_use.own_documents_loss) as f64)
    };
    let gaps = [
        Curve {
            label: "passage auto-encoding",
            color: AFTER,
            points: probes.iter().map(|p| (p.windows as f64, gap(p))).collect(),
        },
        Curve {
            label: "QA gold answer (memory use)",
            color: CEILING,
            points: probes
                .iter()
                .filter_map(|p| Some((p.windows as f64, answer_gap(p)?)))
                .collect(),
        },
    ];
    let drawing = err(path);
    log_chart(&left, "Held-out memory gap", "nats (other − own)", &gaps).map_err(&drawing)?;
    let score = |label, color, of: fn(&Scores) -> f64| Curve {
        label,
        color,
        points: probes
            .iter()
            .filter_map(|p| Some((p.windows as f64, 100.0 * of(&p.qa.as_ref()?.scores))))
            .collect(),
    };
    let qa = [
        score("F1", AFTER, |s| s.f1),
        score("match", BASELINE, |s| s.match_accuracy),
    ];
    log_chart(&right, "Held-out QA, before QA training", "score (%)", &qa).map_err(&drawing)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// Lines of (windows, value) on a log-scale x axis; each line's value at 0 windows, which a
/// log axis cannot show, is drawn flat across the chart.
fn log_chart(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    lines: &[Curve],
) -> std::result::Result<(), String> {
    let fail = |e: DrawingAreaErrorKind<_>| format!("{e:?}");
    let xs = || {
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0).filter(|&w| w > 0.0))
    };
    let x_min = xs().reduce(f64::min).unwrap_or(1.0) / 1.5;
    let x_max = (xs().reduce(f64::max).unwrap_or(10.0) * 1.5).max(x_min * 10.0);
    let ys = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let y_min = ys().fold(0.0, f64::min);
    let y_max = ys().fold(0.1, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((x_min..x_max).log_scale(), y_min..y_max)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("windows seen (log scale); flat lines: before pretraining")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_desc)
        .draw()
        .map_err(fail)?;
    for line in lines {
        let color = line.color;
        let trained: Vec<(f64, f64)> = line.points.iter().copied().filter(|p| p.0 > 0.0).collect();
        chart
            .draw_series(LineSeries::new(trained.clone(), color.stroke_width(3)))
            .map_err(fail)?
            .label(line.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
            });
        chart
            .draw_series(trained.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(fail)?;
        if let Some(&(_, start)) = line.points.iter().find(|p| p.0 == 0.0) {
            chart
                .draw_series(LineSeries::new(
                    [(x_min, start), (x_max, start)],
                    color.mix(0.5).stroke_width(1),
                ))
                .map_err(fail)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    Ok(())
}
