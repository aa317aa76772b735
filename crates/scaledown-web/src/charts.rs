//! The page's charts, drawn on its canvases with plotters-canvas.

use plotters::prelude::*;
use plotters_canvas::CanvasBackend;
use scaledown_data::metrics::Scores;

const LIGHT_BLUE: RGBColor = RGBColor(144, 202, 249);
const DARK_GREEN: RGBColor = RGBColor(56, 142, 60);

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn backend(canvas_id: &str) -> Result<CanvasBackend, Box<dyn std::error::Error>> {
    CanvasBackend::new(canvas_id).ok_or_else(|| format!("no canvas #{canvas_id}").into())
}

/// Training loss per step, raw and smoothed (the PNGs' moving average, `scaledown_data::smoothed`).
pub fn loss_curve(canvas_id: &str, losses: &[f32]) -> DrawResult {
    let root = backend(canvas_id)?.into_drawing_area();
    root.fill(&WHITE)?;
    let top = losses.iter().cloned().fold(0.0f32, f32::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(40)
        .build_cartesian_2d(0usize..losses.len().max(2), 0f32..top)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .light_line_style(WHITE)
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            losses.iter().enumerate().map(|(i, &l)| (i + 1, l)),
            LIGHT_BLUE.stroke_width(1),
        ))?
        .label("loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], LIGHT_BLUE));
    let raw: Vec<f64> = losses.iter().map(|&l| l as f64).collect();
    let smoothed = scaledown_data::smoothed(&raw)
        .into_iter()
        .enumerate()
        .map(|(i, l)| (i + 1, l as f32));
    chart
        .draw_series(LineSeries::new(smoothed, BLUE.stroke_width(2)))?
        .label("smoothed")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// EM, F1, ROUGE-L and match (in %) for each labelled run, as grouped bars.
pub fn metric_bars(canvas_id: &str, runs: &[(&str, Scores)]) -> DrawResult {
    let root = backend(canvas_id)?.into_drawing_area();
    root.fill(&WHITE)?;
    let metrics = ["EM", "F1", "ROUGE-L", "match"];
    let colors = [
        RGBColor(150, 150, 150),
        BLUE,
        RGBColor(230, 120, 20),
        DARK_GREEN,
    ];
    let groups = runs.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption("answer quality (%)", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(36)
        .build_cartesian_2d(0f64..metrics.len() as f64, 0f64..100f64)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(metrics.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 && i < metrics.len() {
                metrics[i].to_string()
            } else {
                String::new()
            }
        })
        .draw()?;
    let width = 0.8 / groups as f64;
    for (g, (label, scores)) in runs.iter().enumerate() {
        let values = [
            scores.exact_match,
            scores.f1,
            scores.rouge_l,
            scores.match_accuracy,
        ];
        let color = colors[g % colors.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(m, v)| {
                let x0 = m as f64 + 0.1 + g as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v * 100.0)], color.filled())
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        // The values, so that a zero is read as a zero and not as a missing bar.
        chart.draw_series(values.iter().enumerate().map(|(m, v)| {
            let x = m as f64 + 0.1 + g as f64 * width;
            Text::new(
                format!("{:.0}", v * 100.0),
                (x, v * 100.0 + 6.0),
                ("sans-serif", 11).into_font().color(&BLACK),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Mean ms per query for each labelled case, as horizontal bars.
pub fn speed_bars(canvas_id: &str, rows: &[(String, f64)]) -> DrawResult {
    let root = backend(canvas_id)?.into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().map(|r| r.1).fold(1.0, f64::max) * 1.25;
    let n = rows.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption("ms per query", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(8)
        .build_cartesian_2d(0f64..top, 0f64..n as f64)?;
    chart.configure_mesh().disable_mesh().y_labels(0).draw()?;
    let colors = [
        BLUE,
        RGBColor(150, 150, 150),
        LIGHT_BLUE,
        RGBColor(200, 200, 200),
    ];
    for (i, (label, ms)) in rows.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let color = colors[i % colors.len()];
        chart.draw_series([Rectangle::new(
            [(0.0, y + 0.15), (*ms, y + 0.85)],
            color.filled(),
        )])?;
        chart.draw_series([Text::new(
            format!("{label}: {ms:.0} ms"),
            (top * 0.01, y + 0.5),
            ("sans-serif", 13).into_font().color(&BLACK),
        )])?;
    }
    root.present()?;
    Ok(())
}
