import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import UnixSignals

/// `cloud-agent serve`: runs the service. Every setting is a flag and an environment variable;
/// the flag wins.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the cloud-agent service (SQLite and local sandboxes by default).",
        discussion: "Durations are written 250ms, 30s, 15m, 2h, 90d. Each flag has a CLOUD_AGENT_* environment variable; the flag wins."
    )

    @Option(help: "Listen address (CLOUD_AGENT_HOST, default 127.0.0.1).") var host: String?
    @Option(help: "Listen port, 0 = pick a free port and print it (CLOUD_AGENT_PORT, default 8787).") var port: String?
    @Option(name: .customLong("data-dir"), help: "Database, workspaces, runtime homes, token file (CLOUD_AGENT_DATA_DIR, default ./.cloud-agent).") var dataDir:
        String?
    @Option(name: .customLong("database-url"), help: "sqlite:PATH or postgres://user:pass@host:port/db (CLOUD_AGENT_DATABASE_URL).") var databaseURL: String?
    @Option(name: .customLong("api-token"), help: "Bearer token for user local (CLOUD_AGENT_API_TOKEN; default generated into <data-dir>/api-token).")
    var apiToken: String?
    @Option(name: .customLong("idle-timeout"), help: "Stop a runtime after this long without activity (CLOUD_AGENT_IDLE_TIMEOUT, default 15m).")
    var idleTimeout: String?
    @Option(name: .customLong("heartbeat-interval"), help: "Runtime heartbeat while an execution runs (CLOUD_AGENT_HEARTBEAT_INTERVAL, default 30s).")
    var heartbeatInterval: String?
    @Option(name: .customLong("stale-threshold"), help: "Fail a running execution without heartbeat this long (CLOUD_AGENT_STALE_THRESHOLD, default 90s).")
    var staleThreshold: String?
    @Option(name: .customLong("pending-timeout"), help: "Fail an execution the runtime never started (CLOUD_AGENT_PENDING_TIMEOUT, default 2m).")
    var pendingTimeout: String?
    @Option(name: .customLong("stop-grace"), help: "SIGTERM → this long → SIGKILL (CLOUD_AGENT_STOP_GRACE, default 10s).") var stopGrace: String?
    @Option(name: .customLong("stuck-after"), help: "Warn once about a running execution without progress (CLOUD_AGENT_STUCK_AFTER, default 10m).")
    var stuckAfter: String?
    @Option(name: .customLong("max-runtimes"), help: "Running runtimes at once (CLOUD_AGENT_MAX_RUNTIMES, default 32).") var maxRuntimes: String?
    @Option(name: .customLong("session-ttl"), help: "Delete a session untouched this long (CLOUD_AGENT_SESSION_TTL, default 90d).") var sessionTTL: String?
    @Option(name: .customLong("event-retention"), help: "Delete events older than this (CLOUD_AGENT_EVENT_RETENTION, default 90d).") var eventRetention: String?
    @Option(help: "bwrap, none or auto (CLOUD_AGENT_SANDBOX, default auto).") var sandbox: String?
    @Option(name: .customLong("log-level"), help: "trace … critical (CLOUD_AGENT_LOG_LEVEL, default info).") var logLevel: String?
    @Option(name: .customLong("agents-file"), help: "JSON file declaring extra command agents (CLOUD_AGENT_AGENTS_FILE).") var agentsFile: String?
    @Option(
        name: .customLong("sandbox-expose"),
        help: "Comma-separated host directories or programs every sandbox may read, such as MCP servers' (CLOUD_AGENT_SANDBOX_EXPOSE).")
    var sandboxExpose: String?
    @Option(name: .customLong("callback-attempts"), help: "Attempts to deliver a completion callback (CLOUD_AGENT_CALLBACK_ATTEMPTS, default 6).")
    var callbackAttempts: String?
    @Option(name: .customLong("orphan-limit"), help: "A runtime without a control plane this long stops itself (CLOUD_AGENT_ORPHAN_LIMIT, default 1h).")
    var orphanLimit: String?
    @Option(
        name: .customLong("input-timeout"),
        help: "An unanswered permission request or question is denied after this long (CLOUD_AGENT_INPUT_TIMEOUT, default 30m).")
    var inputTimeout: String?
    @Option(
        name: .customLong("callback-retry-base"), help: "Wait before a callback's first retry, doubling after (CLOUD_AGENT_CALLBACK_RETRY_BASE, default 2s).")
    var callbackRetryBase: String?

    @Option(
        name: .customLong("advertise-url"),
        help: "Where runtimes and other nodes reach this node, several nodes on one PostgreSQL (CLOUD_AGENT_ADVERTISE_URL, default http://HOST:PORT).")
    var advertiseURL: String?
    @Option(name: .customLong("node-heartbeat"), help: "How often a node renews its registration (CLOUD_AGENT_NODE_HEARTBEAT, default 1s).") var nodeHeartbeat:
        String?
    @Option(name: .customLong("node-lease"), help: "A node not renewed this long is lost and its sessions taken over (CLOUD_AGENT_NODE_LEASE, default 5s).")
    var nodeLease: String?
    @Option(
        name: .customLong("max-runtimes-per-user"),
        help:
            "A user's runtimes at once; at the limit their least recently active idle one is evicted, else 429 (CLOUD_AGENT_MAX_RUNTIMES_PER_USER, default 0: no limit)."
    )
    var maxRuntimesPerUser: String?
    @Option(
        name: .customLong("user-daily-budget-usd"),
        help: "A user's agent cost per UTC day; past it a new execution is 429 (CLOUD_AGENT_USER_DAILY_BUDGET_USD, default 0: no limit).")
    var userDailyBudgetUsd: String?
    @Option(
        name: .customLong("max-events-per-execution"),
        help: "Agent output events kept per execution; the rest dropped and counted (CLOUD_AGENT_MAX_EVENTS_PER_EXECUTION, default 100000).")
    var maxEventsPerExecution: String?
    @Option(
        name: .customLong("max-event-bytes-per-session"),
        help: "Agent output bytes kept per session, e.g. 256MiB (CLOUD_AGENT_MAX_EVENT_BYTES_PER_SESSION, default 256MiB).")
    var maxEventBytesPerSession: String?
    @Option(name: .customLong("wake-up-window"), help: "How far ahead wake-ups are kept in memory (CLOUD_AGENT_WAKE_UP_WINDOW, default 10s).") var wakeUpWindow:
        String?

    var flags: [String: String] {
        let all: [String: String?] = [
            "host": host, "port": port, "dataDir": dataDir, "databaseURL": databaseURL, "apiToken": apiToken,
            "idleTimeout": idleTimeout, "heartbeatInterval": heartbeatInterval, "staleThreshold": staleThreshold,
            "pendingTimeout": pendingTimeout, "stopGrace": stopGrace, "stuckAfter": stuckAfter, "maxRuntimes": maxRuntimes,
            "sessionTTL": sessionTTL, "eventRetention": eventRetention, "sandbox": sandbox, "logLevel": logLevel,
            "agentsFile": agentsFile, "sandboxExpose": sandboxExpose, "callbackAttempts": callbackAttempts, "callbackRetryBase": callbackRetryBase,
            "orphanLimit": orphanLimit, "inputTimeout": inputTimeout, "advertiseURL": advertiseURL, "nodeHeartbeat": nodeHeartbeat, "nodeLease": nodeLease,
            "wakeUpWindow": wakeUpWindow, "maxEventsPerExecution": maxEventsPerExecution, "maxRuntimesPerUser": maxRuntimesPerUser,
            "maxEventBytesPerSession": maxEventBytesPerSession, "userDailyBudgetUsd": userDailyBudgetUsd,
        ]
        return all.compactMapValues { $0 }
    }

    func run() async throws {
        let configuration: ServerConfiguration
        do {
            configuration = try ServerConfiguration.resolve(flags: flags, environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError(error.description)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = configuration.logLevel
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "cloud-agent")
        try await StoreFactory.withNode(configuration, logger: logger) { store, membership in
            let controlPlane = try await ControlPlane.open(
                configuration, store: store, membership: membership, metrics: ServerMetrics(registry: registry), logger: logger
            )
            let tokenSource =
                configuration.apiToken != nil
                ? "from CLOUD_AGENT_API_TOKEN / --api-token" : "saved in \(configuration.dataDirectory.appendingPathComponent("api-token").path)"
            let app = controlPlane.buildApplication { port in
                // Written unbuffered: scripts and tests read the port from a pipe.
                let banner = """
                    cloud-agent listening on http://\(configuration.host):\(port)
                    API token for user local (\(tokenSource)): \(controlPlane.localToken)

                    """
                FileHandle.standardOutput.write(Data(banner.utf8))
            }
            let group = ServiceGroup(
                configuration: .init(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            )
            try await group.run()
        }
    }
}
