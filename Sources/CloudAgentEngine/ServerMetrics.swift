import CloudAgentCore
import Prometheus

/// The control plane's own figures, on the registry `/metrics` serves.
public struct ServerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    package let sessionsCreated: Counter
    package let sessionsDeleted: Counter
    package let sessionsExpired: Counter
    package let wakeUpsFired: Counter
    package let eventsSwept: Counter
    /// Several nodes: other nodes' change notices heard, and lost nodes' sessions taken over.
    package let clusterNotices: Counter
    package let takeovers: Counter
    /// The agents' input requests waiting for an answer, across the cluster (set at each scrape).
    package let inputPending: Gauge

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        sessionsCreated = registry.makeCounter(descriptor: Self.name("sessions_created", "Sessions prepared"))
        sessionsDeleted = registry.makeCounter(descriptor: Self.name("sessions_deleted", "Sessions deleted through the API"))
        sessionsExpired = registry.makeCounter(descriptor: Self.name("sessions_expired", "Sessions deleted by the TTL"))
        wakeUpsFired = registry.makeCounter(descriptor: Self.name("wakeups_fired", "Session wake-ups evaluated"))
        eventsSwept = registry.makeCounter(descriptor: Self.name("event_sweeps", "Retention sweeps of a session's old events"))
        clusterNotices = registry.makeCounter(descriptor: Self.name("cluster_notices", "Change notices heard from other nodes"))
        takeovers = registry.makeCounter(descriptor: Self.name("node_takeovers", "Lost nodes whose sessions this node took over"))
        inputPending = registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "cloud_agent", metricName: "input_pending", unitName: "",
                helpText: "Input requests waiting for an answer, in the whole cluster (the same on every node)"))
    }

    package static func name(_ metric: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "cloud_agent", metricName: metric, unitName: "total", helpText: help)
    }

    package func runtimeStopped(_ rule: StopRule) {
        registry.makeCounter(descriptor: Self.name("runtime_stops", "Runtime stops by rule"), labels: [("rule", rule.rawValue)]).increment()
    }

    package func inputRequested(_ kind: InputKind) {
        registry.makeCounter(descriptor: Self.name("input_requests", "Agents' input requests by kind"), labels: [("kind", kind.rawValue)]).increment()
    }

    /// A resolution, and how long its request waited (by who resolved it).
    package func inputResolved(_ decision: InputDecision, by: InputResolver, waitedMs: Int64) {
        registry.makeCounter(
            descriptor: Self.name("input_resolutions", "Input requests resolved, by decision and by whom"),
            labels: [("decision", decision.rawValue), ("by", by.rawValue)]
        ).increment()
        registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(
                namespace: "cloud_agent", metricName: "input_wait", unitName: "seconds", helpText: "Time from an agent's input request to its resolution"),
            labels: [("by", by.rawValue)], buckets: Self.inputWaitBuckets
        ).recordNanoseconds(max(0, waitedMs) * 1_000_000)
    }

    static let inputWaitBuckets: [Duration] = [
        .seconds(1), .seconds(5), .seconds(15), .seconds(60), .seconds(300), .seconds(900), .seconds(1800), .seconds(3600),
    ]

    /// Tokens (by kind) and cost an agent reported.
    package func usageReported(agent: String, _ usage: Usage) {
        let tokens = Self.name("agent_tokens", "Tokens agents reported, by agent and kind (input excludes cache reads and writes)")
        for (kind, count) in [
            ("input", usage.inputTokens), ("output", usage.outputTokens), ("cache_read", usage.cacheReadTokens), ("cache_write", usage.cacheWriteTokens),
        ] where count > 0 {
            registry.makeCounter(descriptor: tokens, labels: [("agent", agent), ("kind", kind)]).increment(by: count)
        }
        if let cost = usage.costUsd, cost > 0 {
            registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    namespace: "cloud_agent", metricName: "agent_cost", unitName: "usd_total", helpText: "Cost agents reported, in US dollars, by agent"),
                labels: [("agent", agent)]
            ).increment(by: cost)
        }
    }

    package func executionEnded(_ status: ExecutionStatus) {
        registry.makeCounter(descriptor: Self.name("executions_ended", "Executions ended by status"), labels: [("status", status.rawValue)]).increment()
    }
}
