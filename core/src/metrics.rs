//! Prometheus metrics: installs the `metrics` recorder with an HTTP
//! exporter (default http://127.0.0.1:9025/metrics) and describes the
//! series Weir records. The series themselves are recorded where the events
//! happen (sessions, queue, listeners).

use std::time::Duration;

use anyhow::{anyhow, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::config::MetricsConfig;

/// Starts the exporter; must be called inside the tokio runtime.
pub fn install(cfg: &MetricsConfig) -> Result<()> {
    let Some(bind) = cfg.bind else {
        return Ok(());
    };
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(bind)
        .set_buckets_for_metric(
            Matcher::Suffix("seconds".into()),
            &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("weir_queue_sync_batch_size".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            )
        })
        .map_err(|e| anyhow!("metrics: {e}"))?
        .build()
        .map_err(|e| anyhow!("metrics exporter on {bind}: {e}"))?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow!("metrics recorder: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "metrics exporter stopped");
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    describe();
    tracing::info!(%bind, "metrics exporter listening");
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("weir_connections_total", "Connections accepted, by listener");
    describe_counter!("weir_connections_refused_total", "Connections refused by a connection limit, by listener and reason");
    describe_gauge!("weir_connections_active", "Open SMTP connections, by listener");
    describe_counter!("weir_commands_total", "SMTP commands received, by listener and command");
    describe_counter!("weir_replies_total", "SMTP replies sent, by listener and code");
    describe_counter!("weir_messages_accepted_total", "Messages accepted into the queue (250 given)");
    describe_counter!("weir_bytes_accepted_total", Unit::Bytes, "Message bytes accepted into the queue");
    describe_counter!("weir_auth_total", "AUTH attempts, by listener and result");
    describe_counter!("weir_tls_handshake_failures_total", "Failed TLS handshakes, by listener");
    describe_gauge!("weir_queue_depth", "Messages in the queue");
    describe_histogram!("weir_queue_sync_batch_size", "Queue writes made durable by one fsync (group commit)");
    describe_histogram!("weir_queue_sync_seconds", Unit::Seconds, "Time to write and sync one queue batch");
    describe_counter!("weir_queue_write_errors_total", "Queue batches that failed to write");
    describe_histogram!("weir_plugin_call_seconds", Unit::Seconds, "Time of one plugin call, by plugin and stage");
    describe_counter!("weir_plugin_verdicts_total", "Plugin verdicts, by plugin, stage and verdict");
    describe_counter!("weir_plugin_faults_total", "Plugin faults (trap, timeout, memory, refused), by plugin and kind");
    describe_gauge!("weir_plugin_circuit_open", "1 while a plugin is switched off by its circuit breaker");
    describe_counter!(
        "weir_plugin_instances_total",
        "Plugin instances taken up by sessions, by plugin and origin: new (instantiated) or reused (from an earlier session)"
    );
}
