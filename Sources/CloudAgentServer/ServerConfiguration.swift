import CloudAgentCore
import CloudAgentEngine
import Foundation
import Logging

/// Which sandbox wraps a runtime.
public enum SandboxMode: String, Sendable, CaseIterable {
    case bwrap, none, auto
}

/// Every setting of `cloud-agent serve` (the API contract's table), resolved from flags and the
/// environment, flag first.
public struct ServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var dataDirectory: URL
    /// `sqlite:PATH` or `postgres://…`; nil means SQLite in the data directory.
    public var databaseURL: String?
    /// The configured bearer token for user `local`; nil means the generated token file.
    public var apiToken: String?
    public var timing: Timing
    public var maxRuntimes: Int
    /// How much agent output the store keeps per execution and per session.
    public var eventCaps = EventCaps.default
    /// A user's runtimes starting or running at once; nil: no limit (`0` in the settings).
    public var maxRuntimesPerUser: Int?
    /// A user's agent cost per UTC day past which a new execution is refused; nil: no limit.
    public var userDailyBudgetUsd: Double?
    public var sandbox: SandboxMode
    /// Base64 of the 256-bit key sealing secrets; nil means `<data-dir>/secret.key`.
    public var secretKey: String?
    public var logLevel: Logger.Level
    public var agentsFile: String?
    /// Host paths every sandbox may read (for the programs of MCP servers, say): directories,
    /// or programs, which bring what they run with (`AgentRegistry.supportDirectories`).
    public var sandboxExpose: [String] = []
    /// The `cloud-agent-runtime` executable; nil means the one beside this executable.
    public var runtimeExecutable: URL?
    /// Attempts to deliver a completion callback, the first included.
    public var callbackMaxAttempts = 6
    /// The wait before a callback's first retry; each later wait doubles (up to 5 minutes).
    public var callbackRetryBaseMs: Int64 = 2000
    /// Events a stream subscriber may fall behind by before it is closed (resume with fromId).
    public var streamBufferEvents = 1024
    /// How long a stream ticket is valid.
    public var streamTicketLifetimeMs: Int64 = 60_000
    /// Where runtimes and other nodes reach this node (several nodes on one PostgreSQL
    /// database); nil means `http://HOST:PORT`.
    public var advertiseURL: String?
    /// How often a node renews its registration, and how long one not renewed stays alive.
    public var nodeHeartbeatMs: Int64 = 1_000
    public var nodeLeaseMs: Int64 = 5_000
    /// How far ahead wake-ups are armed in memory (the rest stay in the store).
    public var wakeUpWindowMs: Int64 = 10_000
    /// Where the real agents are looked for: `PATH` and `CLOUD_AGENT_CLAUDE_BIN`,
    /// `CLOUD_AGENT_CODEX_BIN`, `CLOUD_AGENT_OPENCODE_BIN`, `CLOUD_AGENT_KILO_BIN`.
    public var agentLookupEnvironment: [String: String] = ProcessInfo.processInfo.environment.filter { name, _ in
        name == "PATH" || (name.hasPrefix("CLOUD_AGENT_") && name.hasSuffix("_BIN"))
    }

    public init(
        host: String = "127.0.0.1", port: Int = 8787, dataDirectory: URL = URL(fileURLWithPath: ".cloud-agent"),
        databaseURL: String? = nil, apiToken: String? = nil, timing: Timing = Timing(), maxRuntimes: Int = 32,
        sandbox: SandboxMode = .auto, secretKey: String? = nil, logLevel: Logger.Level = .info, agentsFile: String? = nil
    ) {
        self.host = host
        self.port = port
        self.dataDirectory = dataDirectory
        self.databaseURL = databaseURL
        self.apiToken = apiToken
        self.timing = timing
        self.maxRuntimes = maxRuntimes
        self.sandbox = sandbox
        self.secretKey = secretKey
        self.logLevel = logLevel
        self.agentsFile = agentsFile
    }

    /// A setting that could not be used, naming it.
    public struct Invalid: Error, CustomStringConvertible, Equatable {
        public var setting: String
        public var message: String
        public var description: String { "invalid setting \(setting): \(message)" }
    }

    /// One setting: its flag, its environment variable.
    public struct Setting: Sendable {
        public let flag: String
        public let environment: String
    }

    public static let settings: [String: Setting] = [
        "host": .init(flag: "--host", environment: "CLOUD_AGENT_HOST"),
        "port": .init(flag: "--port", environment: "CLOUD_AGENT_PORT"),
        "dataDir": .init(flag: "--data-dir", environment: "CLOUD_AGENT_DATA_DIR"),
        "databaseURL": .init(flag: "--database-url", environment: "CLOUD_AGENT_DATABASE_URL"),
        "apiToken": .init(flag: "--api-token", environment: "CLOUD_AGENT_API_TOKEN"),
        "idleTimeout": .init(flag: "--idle-timeout", environment: "CLOUD_AGENT_IDLE_TIMEOUT"),
        "heartbeatInterval": .init(flag: "--heartbeat-interval", environment: "CLOUD_AGENT_HEARTBEAT_INTERVAL"),
        "staleThreshold": .init(flag: "--stale-threshold", environment: "CLOUD_AGENT_STALE_THRESHOLD"),
        "pendingTimeout": .init(flag: "--pending-timeout", environment: "CLOUD_AGENT_PENDING_TIMEOUT"),
        "stopGrace": .init(flag: "--stop-grace", environment: "CLOUD_AGENT_STOP_GRACE"),
        "stuckAfter": .init(flag: "--stuck-after", environment: "CLOUD_AGENT_STUCK_AFTER"),
        "maxRuntimes": .init(flag: "--max-runtimes", environment: "CLOUD_AGENT_MAX_RUNTIMES"),
        "sessionTTL": .init(flag: "--session-ttl", environment: "CLOUD_AGENT_SESSION_TTL"),
        "eventRetention": .init(flag: "--event-retention", environment: "CLOUD_AGENT_EVENT_RETENTION"),
        "sandbox": .init(flag: "--sandbox", environment: "CLOUD_AGENT_SANDBOX"),
        "secretKey": .init(flag: "", environment: "CLOUD_AGENT_SECRET_KEY"),
        "logLevel": .init(flag: "--log-level", environment: "CLOUD_AGENT_LOG_LEVEL"),
        "agentsFile": .init(flag: "--agents-file", environment: "CLOUD_AGENT_AGENTS_FILE"),
        "sandboxExpose": .init(flag: "--sandbox-expose", environment: "CLOUD_AGENT_SANDBOX_EXPOSE"),
        "callbackAttempts": .init(flag: "--callback-attempts", environment: "CLOUD_AGENT_CALLBACK_ATTEMPTS"),
        "callbackRetryBase": .init(flag: "--callback-retry-base", environment: "CLOUD_AGENT_CALLBACK_RETRY_BASE"),
        "orphanLimit": .init(flag: "--orphan-limit", environment: "CLOUD_AGENT_ORPHAN_LIMIT"),
        "inputTimeout": .init(flag: "--input-timeout", environment: "CLOUD_AGENT_INPUT_TIMEOUT"),
        "advertiseURL": .init(flag: "--advertise-url", environment: "CLOUD_AGENT_ADVERTISE_URL"),
        "nodeHeartbeat": .init(flag: "--node-heartbeat", environment: "CLOUD_AGENT_NODE_HEARTBEAT"),
        "nodeLease": .init(flag: "--node-lease", environment: "CLOUD_AGENT_NODE_LEASE"),
        "wakeUpWindow": .init(flag: "--wake-up-window", environment: "CLOUD_AGENT_WAKE_UP_WINDOW"),
        "maxRuntimesPerUser": .init(flag: "--max-runtimes-per-user", environment: "CLOUD_AGENT_MAX_RUNTIMES_PER_USER"),
        "userDailyBudgetUsd": .init(flag: "--user-daily-budget-usd", environment: "CLOUD_AGENT_USER_DAILY_BUDGET_USD"),
        "maxEventsPerExecution": .init(flag: "--max-events-per-execution", environment: "CLOUD_AGENT_MAX_EVENTS_PER_EXECUTION"),
        "maxEventBytesPerSession": .init(flag: "--max-event-bytes-per-session", environment: "CLOUD_AGENT_MAX_EVENT_BYTES_PER_SESSION"),
    ]

    /// Resolves every setting: `flags` (by the keys of `settings`) win over `environment`.
    public static func resolve(flags: [String: String], environment: [String: String]) throws(Invalid) -> ServerConfiguration {
        func value(_ key: String) -> (text: String, name: String)? {
            let setting = settings[key]!
            if let flag = flags[key] { return (flag, setting.flag) }
            if let env = environment[setting.environment], !env.isEmpty { return (env, setting.environment) }
            return nil
        }
        func duration(_ key: String, into target: inout Int64) throws(Invalid) {
            guard let (text, name) = value(key) else { return }
            do { target = try DurationText.milliseconds(text) } catch { throw Invalid(setting: name, message: error.description) }
        }

        var configuration = ServerConfiguration()
        configuration.agentLookupEnvironment = environment.filter { name, _ in
            name == "PATH" || (name.hasPrefix("CLOUD_AGENT_") && name.hasSuffix("_BIN"))
        }
        if let (text, _) = value("host") { configuration.host = text }
        if let (text, name) = value("port") {
            guard let port = Int(text), (0...65535).contains(port) else { throw Invalid(setting: name, message: "\"\(text)\" is not a port (0–65535)") }
            configuration.port = port
        }
        if let (text, _) = value("dataDir") { configuration.dataDirectory = URL(fileURLWithPath: text) }
        if let (text, name) = value("databaseURL") {
            guard text.hasPrefix("sqlite:") || text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") else {
                throw Invalid(setting: name, message: "expected sqlite:PATH or postgres://user:pass@host:port/db")
            }
            configuration.databaseURL = text
        }
        if let (text, _) = value("apiToken") { configuration.apiToken = text }
        try duration("idleTimeout", into: &configuration.timing.idleTimeoutMs)
        try duration("heartbeatInterval", into: &configuration.timing.heartbeatIntervalMs)
        try duration("staleThreshold", into: &configuration.timing.staleThresholdMs)
        try duration("pendingTimeout", into: &configuration.timing.pendingTimeoutMs)
        try duration("stopGrace", into: &configuration.timing.stopGraceMs)
        try duration("stuckAfter", into: &configuration.timing.stuckAfterMs)
        try duration("sessionTTL", into: &configuration.timing.sessionTTLMs)
        try duration("eventRetention", into: &configuration.timing.eventRetentionMs)
        try duration("orphanLimit", into: &configuration.timing.orphanLimitMs)
        try duration("inputTimeout", into: &configuration.timing.inputTimeoutMs)
        if let (text, name) = value("maxRuntimes") {
            guard let count = Int(text), count >= 1 else { throw Invalid(setting: name, message: "\"\(text)\" is not a positive whole number") }
            configuration.maxRuntimes = count
        }
        if let (text, name) = value("maxRuntimesPerUser") {
            guard let count = Int(text), count >= 0 else { throw Invalid(setting: name, message: "\"\(text)\" is not a whole number ≥ 0 (0: no limit)") }
            configuration.maxRuntimesPerUser = count == 0 ? nil : count
        }
        if let (text, name) = value("userDailyBudgetUsd") {
            guard let amount = Double(text), amount.isFinite, amount >= 0 else {
                throw Invalid(setting: name, message: "\"\(text)\" is not an amount of US dollars ≥ 0 (0: no limit)")
            }
            configuration.userDailyBudgetUsd = amount == 0 ? nil : amount
        }
        if let (text, name) = value("maxEventsPerExecution") {
            guard let count = Int(text), count >= 1 else { throw Invalid(setting: name, message: "\"\(text)\" is not a positive whole number") }
            configuration.eventCaps.maxEventsPerExecution = count
        }
        if let (text, name) = value("maxEventBytesPerSession") {
            let bytes: Int64
            do { bytes = try ByteSizeText.bytes(text) } catch { throw Invalid(setting: name, message: error.description) }
            guard bytes >= 1024 else { throw Invalid(setting: name, message: "\"\(text)\" is less than 1KiB") }
            configuration.eventCaps.maxEventBytesPerSession = bytes
        }
        if let (text, name) = value("sandbox") {
            guard let mode = SandboxMode(rawValue: text) else { throw Invalid(setting: name, message: "\"\(text)\" is not one of bwrap, none, auto") }
            configuration.sandbox = mode
        }
        if let (text, name) = value("secretKey") {
            do { _ = try SecretBox(base64Key: text) } catch { throw Invalid(setting: name, message: error.description) }
            configuration.secretKey = text
        }
        if let (text, name) = value("logLevel") {
            guard let level = Logger.Level(rawValue: text.lowercased()) else {
                throw Invalid(setting: name, message: "\"\(text)\" is not one of trace, debug, info, notice, warning, error, critical")
            }
            configuration.logLevel = level
        }
        if let (text, _) = value("agentsFile") { configuration.agentsFile = text }
        if let (text, name) = value("sandboxExpose") {
            let paths = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            if let relative = paths.first(where: { !$0.hasPrefix("/") }) {
                throw Invalid(setting: name, message: "\"\(relative)\" is not an absolute path")
            }
            configuration.sandboxExpose = paths
        }
        if let (text, name) = value("callbackAttempts") {
            guard let count = Int(text), (1...100).contains(count) else {
                throw Invalid(setting: name, message: "\"\(text)\" is not a whole number from 1 to 100")
            }
            configuration.callbackMaxAttempts = count
        }
        try duration("callbackRetryBase", into: &configuration.callbackRetryBaseMs)
        if let (text, name) = value("advertiseURL") {
            guard ClusterView.runtimeURL(advertised: text) != nil, URL(string: text)?.host != nil else {
                throw Invalid(setting: name, message: "expected http://HOST:PORT or https://HOST:PORT")
            }
            configuration.advertiseURL = text
        }
        try duration("nodeHeartbeat", into: &configuration.nodeHeartbeatMs)
        try duration("nodeLease", into: &configuration.nodeLeaseMs)
        try duration("wakeUpWindow", into: &configuration.wakeUpWindowMs)
        if configuration.nodeLeaseMs <= configuration.nodeHeartbeatMs {
            let culprit = value("nodeLease")?.name ?? value("nodeHeartbeat")?.name ?? settings["nodeLease"]!.environment
            throw Invalid(setting: culprit, message: "the node lease must be longer than the node heartbeat")
        }
        if configuration.timing.staleThresholdMs <= configuration.timing.heartbeatIntervalMs {
            // Blame the setting the user gave: the threshold if they set it, else the interval.
            let culprit = value("staleThreshold")?.name ?? value("heartbeatInterval")?.name ?? settings["staleThreshold"]!.environment
            throw Invalid(setting: culprit, message: "the stale threshold must be longer than the heartbeat interval")
        }
        return configuration
    }

    /// Where `cloud-agent-runtime` is: configured, or beside the running executable.
    public var resolvedRuntimeExecutable: URL {
        if let runtimeExecutable { return runtimeExecutable }
        let own = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return own.deletingLastPathComponent().appendingPathComponent("cloud-agent-runtime")
    }

    /// The SQLite file in use when the database is SQLite.
    public var sqlitePath: String? {
        guard let databaseURL else { return dataDirectory.appendingPathComponent("cloud-agent.sqlite").path }
        guard databaseURL.hasPrefix("sqlite:") else { return nil }
        return String(databaseURL.dropFirst("sqlite:".count))
    }
}
