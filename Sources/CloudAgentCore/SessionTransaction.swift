import Foundation

/// What a decision about one session reads, inside the transaction that writes it.
public struct SessionState: Sendable, Equatable {
    public var session: SessionRecord
    /// The session's active execution while there is one, else its latest (never by id order
    /// while one is active).
    public var execution: Execution?
    /// When the session's oldest retained event was recorded (read for the rules only).
    public var oldestEventAt: Date?
    /// The session's stored wake-up (read for the rules only).
    public var wakeUp: Date?
    /// The first of the session's queued follow-ups (`session.queue.first`), read for the rules
    /// only: it starts once no execution is active.
    public var nextQueued: Execution?
    /// How many of the owner's other sessions have a runtime starting or running, read (for the
    /// rules) only while this session's runtime is stopped or stopping, when a decision may
    /// start it: the per-user quota. Counted under a lock of the owner's (PostgreSQL: an
    /// advisory lock in the transaction), so that two starts at once cannot both pass.
    public var ownerRuntimes: Int?

    public init(
        session: SessionRecord, execution: Execution?, oldestEventAt: Date? = nil, wakeUp: Date? = nil, nextQueued: Execution? = nil,
        ownerRuntimes: Int? = nil
    ) {
        self.session = session
        self.execution = execution
        self.oldestEventAt = oldestEventAt
        self.wakeUp = wakeUp
        self.nextQueued = nextQueued
        self.ownerRuntimes = ownerRuntimes
    }
}

/// A command for a session's runtime, kept in the runtime outbox (`SessionChange.commands`)
/// until it is moot: an `execute` until its execution leaves `pending`, a `kill` until its
/// execution ends, a `settings` until a newer one replaces it or the runtime is welcomed anew,
/// every command when the runtime stops. Each connection is sent every row once, in order, so
/// a runtime that reconnects gets what it may have missed, and a runtime ignores a repeat.
public enum OutboxCommand: Sendable, Equatable, Codable {
    case execute(ExecutionID)
    case kill(ExecutionID, reason: String)
    case settings(idleTimeoutMs: Int64)
    /// The answer to an input request, for the agent. Kept until the runtime stops (a runtime
    /// ignores an answer to a request it is not waiting for), so that one that reconnects gets it.
    case answer(InputReply)
    /// Hold the execution's agent where it is (SIGSTOP to its processes) while a budget request
    /// waits; `resume` lets it go on. Only the latest of the two is kept for an execution.
    case pause(ExecutionID)
    case resume(ExecutionID)

    public var executionId: ExecutionID? {
        switch self {
        case .execute(let id), .kill(let id, _), .pause(let id), .resume(let id): id
        // Not keyed by execution: an execution may have several answers in the outbox.
        case .settings, .answer: nil
        }
    }

    /// The kind column: `execute`, `kill`, `settings`, `answer`, `pause` or `resume`.
    public var kind: String {
        switch self {
        case .execute: "execute"
        case .kill: "kill"
        case .settings: "settings"
        case .answer: "answer"
        case .pause: "pause"
        case .resume: "resume"
        }
    }

    /// The kinds a new pause or resume of an execution replaces.
    public static let holdKinds: Set<String> = ["pause", "resume"]
}

/// An outbox row: its id orders the rows of a session.
public struct QueuedCommand: Sendable, Equatable {
    public var id: Int64
    public var sessionId: SessionID
    public var command: OutboxCommand

    public init(id: Int64, sessionId: SessionID, command: OutboxCommand) {
        self.id = id
        self.sessionId = sessionId
        self.command = command
    }
}

/// Outbox rows a change makes moot.
public enum CommandDrop: Sendable, Equatable {
    /// Every row of the session (its runtime stopped).
    case all
    /// The rows of one execution of a kind (`execute` once it runs, any once it ended).
    case execution(ExecutionID, kinds: Set<String>)
    /// The `settings` rows.
    case settings
}

/// Work to do after a change commits, outside any lock and transaction. Every effect is
/// idempotent, so that one redone after a crash loses and repeats nothing that matters.
public enum SessionEffect: Sendable, Equatable {
    /// Launch the session's runtime: restore its workspace first (a cold start), take a runtime
    /// slot, spawn, then record the launch if the session still wants it.
    case launch(requestedAt: Date, restore: Bool)
    /// Take a stopping runtime's processes down, then record it stopped.
    /// `host` is the node whose host runs the process (nil: a single node's).
    case terminate(RuntimeProcess?, sandbox: String?, rule: StopRule, host: String? = nil)
    /// Kill a process whose launch nothing wants any more (its session was deleted or stopped
    /// while it was being spawned).
    case discardLaunch(RuntimeProcess, sandbox: String?)
    /// Send the runtime outbox's new rows to the runtime's connection.
    case deliverCommands
    /// Wake the callback dispatcher: the change wrote deliveries.
    case deliverCallbacks
    /// Commit and push the workspace after this execution (auto-commit).
    case autoCommit(ExecutionID)
    /// The runtime is stopped: forget its connection and watch, free its slot.
    case released
    /// The session is gone: close its connection and streams, remove its files.
    case removed(StopRule)
}

/// A decision: the change to commit (nil changes nothing), the effects to run after the
/// commit, and what the caller is told.
public struct Decision<Output: Sendable>: Sendable {
    public var change: SessionChange?
    public var effects: [SessionEffect]
    public var output: Output
    /// Whether the change may move the session's deadlines, so that the rules are evaluated
    /// after it in its transaction (`SessionReducer.ruled`). False for a change the rules read
    /// only when the session's wake-up fires (a runtime's output: its progress).
    public var movesDeadlines: Bool

    public init(change: SessionChange? = nil, effects: [SessionEffect] = [], output: Output, movesDeadlines: Bool = true) {
        self.change = change
        self.effects = effects
        self.output = output
        self.movesDeadlines = movesDeadlines
    }
}

extension Decision where Output == Void {
    public init(change: SessionChange? = nil, effects: [SessionEffect] = []) {
        self.init(change: change, effects: effects, output: ())
    }
}

/// A committed decision: its output, effects, and the events the store numbered.
public struct Committed<Output: Sendable>: Sendable {
    public var output: Output
    public var effects: [SessionEffect]
    public var events: [Event]
    /// The change as committed (nil when the decision changed nothing).
    public var change: SessionChange?

    public init(output: Output, effects: [SessionEffect], events: [Event], change: SessionChange?) {
        self.output = output
        self.effects = effects
        self.events = events
        self.change = change
    }
}

/// A bound a request may reach (answered 429).
public enum LimitKind: String, Sendable, Equatable {
    case queue, runtimesPerUser, dailyBudget

    /// The error code the API answers with.
    public var code: String {
        switch self {
        case .queue: "QUEUE_FULL"
        case .runtimesPerUser: "QUOTA_EXCEEDED"
        case .dailyBudget: "BUDGET_EXCEEDED"
        }
    }
}

/// Why a command about a session was refused. The HTTP layer maps each to its status.
public enum SessionError: Error, Equatable, CustomStringConvertible {
    case notFound(SessionID)
    case executionNotFound(ExecutionID)
    /// The session is not in a state that allows this (409 `INVALID_STATE`).
    case invalidState(String)
    /// Another execution is active (409 `EXECUTION_IN_PROGRESS`).
    case executionInProgress(ExecutionID)
    /// No runtime can be had now; retry (503 `RUNTIME_UNAVAILABLE`).
    case runtimeUnavailable(String)
    /// No input request of the session has this id (404).
    case inputNotFound(String)
    /// A request whose body does not fit the state it acts on (400 `INVALID_REQUEST`, naming the field).
    case invalidRequest(field: String, String)
    /// A bound was reached (429, retryable): the session's queue (`QUEUE_FULL`), the user's
    /// runtimes (`QUOTA_EXCEEDED`) or the user's daily budget (`BUDGET_EXCEEDED`).
    case limitReached(LimitKind, limit: Double, String)

    public var description: String {
        switch self {
        case .notFound(let id): "session \(id) not found"
        case .executionNotFound(let id): "execution \(id) not found"
        case .invalidState(let message), .runtimeUnavailable(let message): message
        case .executionInProgress(let id): "execution \(id) is still active"
        case .inputNotFound(let id): "input request \(id) not found"
        case .invalidRequest(let field, let message): "\(field) \(message)"
        case .limitReached(_, _, let message): message
        }
    }
}
