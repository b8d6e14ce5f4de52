import Foundation

/// A secret value sealed with the server's key (AES-GCM, nonce + ciphertext + tag).
/// Its plaintext exists only in memory, where a runtime needs it.
public struct SealedValue: Sendable, Equatable, Codable {
    public var combined: Data
    public init(combined: Data) { self.combined = combined }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let data = Data(base64Encoded: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "sealed value is not base64"))
        }
        combined = data
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(combined.base64EncodedString())
    }
}

/// The repository a session works on. The credential is sealed.
public struct RepoSpec: Sendable, Equatable, Codable {
    public var url: String
    public var branch: String?
    public var token: SealedValue?

    public init(url: String, branch: String? = nil, token: SealedValue? = nil) {
        self.url = url
        self.branch = branch
        self.token = token
    }
}

/// Where to POST when an execution ends. Header values are sealed (they usually carry credentials).
public struct CallbackSpec: Sendable, Equatable, Codable {
    public var url: String
    public var headers: [String: SealedValue]

    public init(url: String, headers: [String: SealedValue] = [:]) {
        self.url = url
        self.headers = headers
    }
}

/// What a user asked for when preparing a session (the writable part of a session).
public struct SessionSpec: Sendable, Equatable, Codable {
    public var prompt: String
    public var agent: String
    public var mode: String?
    public var model: String?
    public var repo: RepoSpec?
    public var envVars: [String: String]
    public var secrets: [String: SealedValue]
    public var setupCommands: [String]
    public var autoCommit: Bool
    public var callback: CallbackSpec?
    /// The session's own idle timeout; nil means the server's default.
    public var idleTimeoutMs: Int64?
    /// Whether the agent asks before using a tool; nil (as stored before it existed) is `auto`.
    public var approvalMode: ApprovalMode?
    /// The MCP servers handed to the agent, by name; nil (as stored before they existed) is none.
    public var mcpServerSpecs: [String: MCPServerSpec]?
    /// The session's spending limit; nil is none.
    public var budget: Budget?

    public var mcpServers: [String: MCPServerSpec] {
        get { mcpServerSpecs ?? [:] }
        set { mcpServerSpecs = newValue.isEmpty ? nil : newValue }
    }

    /// Whether the agent asks before using a tool.
    public var approvals: ApprovalMode {
        get { approvalMode ?? .auto }
        set { approvalMode = newValue == .auto ? nil : newValue }
    }

    public static let defaultAgent = "scripted"

    public init(
        prompt: String, agent: String = SessionSpec.defaultAgent, mode: String? = nil, model: String? = nil,
        repo: RepoSpec? = nil, envVars: [String: String] = [:], secrets: [String: SealedValue] = [:],
        setupCommands: [String] = [], autoCommit: Bool = false, callback: CallbackSpec? = nil,
        idleTimeoutMs: Int64? = nil
    ) {
        self.prompt = prompt
        self.agent = agent
        self.mode = mode
        self.model = model
        self.repo = repo
        self.envVars = envVars
        self.secrets = secrets
        self.setupCommands = setupCommands
        self.autoCommit = autoCommit
        self.callback = callback
        self.idleTimeoutMs = idleTimeoutMs
    }
}

/// A session as the store keeps it.
public struct SessionRecord: Sendable, Equatable, Codable {
    public var id: SessionID
    public var owner: Owner
    public var createdAt: Date
    public var preparedAt: Date
    public var initiatedAt: Date?
    /// Touched by every write to the session; the TTL runs from it.
    public var updatedAt: Date
    public var spec: SessionSpec
    public var workBranch: String?
    public var runtime: RuntimeStatus
    public var activeExecutionId: ExecutionID?
    public var executionCount: Int
    /// The agent's own conversation id (Claude Code's `session_id`, Codex's `thread_id`,
    /// OpenCode's and Kilo's `sessionID`), reported by the runtime when an execution ends;
    /// every follow-up resumes it. Cleared when the session's agent changes.
    public var agentConversationId: String?
    /// Set while a PATCH that needs a new runtime (repo, setup, environment, agent) is being
    /// carried out: initiate answers 409 meanwhile, and a second such PATCH too.
    public var changingSince: Date?
    /// The node carrying that change out (several nodes): a change whose node was lost, or
    /// restarted since, is one nothing carries out any more.
    public var changingNode: String?
    /// The execution whose auto-commit has not been recorded yet: the next execution is not sent
    /// to the runtime before it, and the runtime is not idle meanwhile.
    public var autoCommitPending: ExecutionID?
    /// The agent's permission requests and questions (pending, and the latest resolved) and the
    /// session's "always" answers; nil (as stored before they existed) when there are none.
    public var inputBook: SessionInputs?
    /// The queued follow-ups, in order (their executions are stored `queued`); nil (as stored
    /// before the queue existed) when there are none.
    public var queuedIds: [ExecutionID]?

    /// The queued follow-ups, in the order they run.
    public var queue: [ExecutionID] {
        get { queuedIds ?? [] }
        set { queuedIds = newValue.isEmpty ? nil : newValue }
    }

    /// The sum of its executions' usage; nil (as stored before usage existed) when none reported any.
    public var usageTotal: Usage?
    /// Bytes of agent output stored over the session's life (the event caps' count); nil is 0.
    public var eventBytes: Int64?
    /// Agent output events dropped past the event caps; nil is 0.
    public var eventsDropped: Int64?
    /// The active execution's dropped output, until its `events.truncated` is written.
    public var truncation: Truncation?
    /// How many times a user let the agent go on past the budget (each adds the budget's amount
    /// again); nil is none. A new budget starts it again.
    public var budgetRaises: Int?
    /// The execution stopped for the budget (interrupted, or being): it is not asked about again.
    public var budgetStopped: ExecutionID?

    /// At most this many follow-ups wait in a session's queue.
    public static let maxQueued = 20

    /// The agent's permission requests and questions, and the session's "always" answers.
    public var inputs: SessionInputs {
        get { inputBook ?? SessionInputs() }
        set { inputBook = newValue.requests.isEmpty && newValue.rules.isEmpty ? nil : newValue }
    }

    public init(
        id: SessionID, owner: Owner, createdAt: Date, spec: SessionSpec, workBranch: String? = nil,
        runtime: RuntimeStatus = .neverStarted
    ) {
        self.id = id
        self.owner = owner
        self.createdAt = createdAt
        self.preparedAt = createdAt
        self.updatedAt = createdAt
        self.spec = spec
        self.workBranch = workBranch
        self.runtime = runtime
        self.executionCount = 0
    }

    /// The idle timeout in force for this session.
    public func idleTimeoutMs(default serverDefault: Int64) -> Int64 {
        spec.idleTimeoutMs ?? serverDefault
    }
}
