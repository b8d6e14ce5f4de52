import Foundation

/// Why the store refused a write.
public enum StoreError: Error, Equatable, CustomStringConvertible {
    /// The session already has a pending or running execution (one active execution per session).
    case executionInProgress(ExecutionID)
    case sessionNotFound(SessionID)
    case duplicateSession(SessionID)
    /// The database did not answer in time (it is down or unreachable); retry later.
    case unavailable(String)
    /// The owner already has this many runtimes (`insertSession`'s `maxOwnerRuntimes`).
    case quotaExceeded(Int)

    public var description: String {
        switch self {
        case .executionInProgress(let id): "execution \(id) is still active"
        case .sessionNotFound(let id): "session \(id) not found"
        case .duplicateSession(let id): "session \(id) already exists"
        case .unavailable(let why): "the database is unavailable: \(why)"
        case .quotaExceeded(let limit): "the owner already has \(limit) runtimes"
        }
    }
}

/// A position in the newest-first session list.
public struct SessionCursor: Sendable, Equatable {
    public var createdAt: Date
    public var id: SessionID

    public init(createdAt: Date, id: SessionID) {
        self.createdAt = createdAt
        self.id = id
    }

    public init(after session: SessionRecord) { self.init(createdAt: session.createdAt, id: session.id) }

    /// The opaque form the API hands out: `<millis>.<sessionId>`.
    public var token: String { "\(createdAt.millisecondsSince1970).\(id.rawValue)" }

    public init?(token: String) {
        let parts = token.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, let millis = Int64(parts[0]), let id = SessionID(rawValue: parts[1]) else { return nil }
        self.init(createdAt: Date(millisecondsSince1970: millis), id: id)
    }
}

/// Which events to read: ids above `afterId`, at most `limit`, optionally of one execution or some types.
public struct EventQuery: Sendable, Equatable {
    public var afterId: Int64
    public var limit: Int
    public var executionId: ExecutionID?
    public var types: Set<String>?

    public init(afterId: Int64 = 0, limit: Int = 100, executionId: ExecutionID? = nil, types: Set<String>? = nil) {
        self.afterId = afterId
        self.limit = limit
        self.executionId = executionId
        self.types = types
    }
}

/// A heartbeat to record: one column of one execution row.
public struct Heartbeat: Sendable, Equatable {
    public var executionId: ExecutionID
    public var at: Date

    public init(executionId: ExecutionID, at: Date) {
        self.executionId = executionId
        self.at = at
    }
}

/// A session's durable next wake-up.
public struct WakeUp: Sendable, Equatable {
    public var sessionId: SessionID
    public var dueAt: Date

    public init(sessionId: SessionID, dueAt: Date) {
        self.sessionId = sessionId
        self.dueAt = dueAt
    }
}

/// One atomic write to a session: everything in it lands, or nothing does.
public struct SessionChange: Sendable {
    public var sessionId: SessionID
    /// The whole session record to save (nil leaves it as it is).
    public var session: SessionRecord?
    /// A new execution. An active one (pending) is refused with `StoreError.executionInProgress`
    /// while another is active; a queued one is not.
    public var newExecution: Execution?
    /// Executions to save as they are given.
    public var executions: [Execution]
    /// Queued executions cancelled before their turn: their rows are deleted (only while
    /// still queued).
    public var cancelledQueued: [ExecutionID]
    /// Usage to add to its owner's per-day counts (each row adds to the stored one).
    public var usage: [UsageDay]
    /// Events to append; the store numbers them.
    public var events: [NewEvent]
    /// The session's next wake-up: `.some(nil)` clears it, nil leaves it.
    public var wakeUp: Date??
    /// Callbacks to deliver (the outbox), written with the change that ended their executions
    /// (or recorded their input requests), so that a crash after the commit cannot lose one; at
    /// most one per execution and input request (a second is ignored).
    public var callbacks: [CallbackDelivery]
    /// Runtime commands to add to the runtime outbox. A row equal to one already there (the
    /// same kind for the same execution) is not added twice.
    public var commands: [OutboxCommand]
    /// Outbox rows made moot by this change (removed before `commands` are added).
    public var dropCommands: [CommandDrop]
    /// Delete the session's events recorded before this time (retention).
    public var deleteEventsBefore: Date?
    /// Delete the session with everything it owns. The change's `events` are numbered and
    /// returned (for live subscribers) but not kept; the rest of the change is moot.
    public var deletesSession: Bool

    public init(
        sessionId: SessionID, session: SessionRecord? = nil, newExecution: Execution? = nil, executions: [Execution] = [],
        cancelledQueued: [ExecutionID] = [], usage: [UsageDay] = [], events: [NewEvent] = [], wakeUp: Date?? = nil, callbacks: [CallbackDelivery] = [],
        commands: [OutboxCommand] = [],
        dropCommands: [CommandDrop] = [], deleteEventsBefore: Date? = nil, deletesSession: Bool = false
    ) {
        self.sessionId = sessionId
        self.session = session
        self.newExecution = newExecution
        self.executions = executions
        self.cancelledQueued = cancelledQueued
        self.usage = usage
        self.events = events
        self.wakeUp = wakeUp
        self.callbacks = callbacks
        self.commands = commands
        self.dropCommands = dropCommands
        self.deleteEventsBefore = deleteEventsBefore
        self.deletesSession = deletesSession
    }

    /// A change that deletes the session.
    public static func delete(_ id: SessionID) -> SessionChange { SessionChange(sessionId: id, deletesSession: true) }
}

/// The control plane's durable state. Every backend (memory, SQLite, PostgreSQL) passes the
/// same conformance suite.
public protocol SessionStore: Sendable {
    // API tokens, stored by their hash.
    func saveToken(hash: String, owner: Owner, createdAt: Date) async throws
    func owner(forTokenHash hash: String) async throws -> Owner?

    // Sessions.
    /// A new session, with its first wake-up (if any) in the same transaction. With
    /// `maxOwnerRuntimes`, refused with `StoreError.quotaExceeded` when the owner already has
    /// that many sessions whose runtime is starting or running (counted under the owner's lock).
    func insertSession(_ session: SessionRecord, wakeUp: Date?, maxOwnerRuntimes: Int?) async throws
    /// The owner's sessions whose runtime is starting or running (the per-user quota).
    func liveSessions(of owner: Owner) async throws -> [SessionRecord]
    func session(_ id: SessionID) async throws -> SessionRecord?
    /// An owner's sessions, newest first, after the cursor.
    func sessions(owner: Owner, limit: Int, after cursor: SessionCursor?) async throws -> [SessionRecord]
    /// Every session whose runtime is in one of these states (capacity, supervision).
    func sessions(withRuntimeIn states: Set<RuntimeState>) async throws -> [SessionRecord]
    /// Deletes the session with its executions, events, wake-up and pending callbacks. False when there was none.
    func deleteSession(_ id: SessionID) async throws -> Bool
    /// Applies a change atomically and returns the appended events with their ids.
    @discardableResult
    func commit(_ change: SessionChange) async throws -> [Event]
    /// One session change as one transaction: reads the session's state (nil when there is no
    /// such session), calls `decide` — a pure function, which may throw to write nothing — and
    /// writes its change, all under the store's write lock for the session (SQLite: one
    /// `BEGIN IMMEDIATE` transaction; PostgreSQL: `SELECT … FOR UPDATE` in one transaction), so
    /// that no other change to the session lands between the read and the write.
    /// `forRules` also reads what only the rules need: `oldestEventAt`, `wakeUp` and
    /// `nextQueued`. The state's `execution` is never a queued one.
    func update<Output: Sendable>(
        _ id: SessionID, forRules: Bool, _ decide: @escaping @Sendable (SessionState?) throws -> Decision<Output>
    ) async throws -> Committed<Output>
    /// The runtime outbox's rows of a session after `id`, in order.
    func commands(of session: SessionID, after id: Int64) async throws -> [QueuedCommand]

    // Executions.
    func execution(_ id: ExecutionID) async throws -> Execution?
    /// A session's executions, oldest first.
    func executions(of session: SessionID) async throws -> [Execution]
    /// A session's latest execution that is not queued.
    func latestExecution(of session: SessionID) async throws -> Execution?
    /// Records heartbeats of running executions (one column each). Returns how many rows changed.
    @discardableResult
    func recordHeartbeats(_ heartbeats: [Heartbeat]) async throws -> Int

    /// An owner's usage per UTC day and agent, for the days `from` through `to` (`YYYY-MM-DD`),
    /// oldest day first, agents by name.
    func usage(of owner: Owner, from: String, to: String) async throws -> [UsageDay]

    // Events.
    func events(of session: SessionID, _ query: EventQuery) async throws -> [Event]
    func lastEventId(of session: SessionID) async throws -> Int64
    func oldestEventAt(of session: SessionID) async throws -> Date?
    @discardableResult
    func deleteEvents(of session: SessionID, olderThan date: Date) async throws -> Int

    // Wake-ups.
    func wakeUps() async throws -> [WakeUp]
    /// The wake-ups due before `horizon`, earliest first, at most `limit`: the window a node
    /// arms (never all of them at once). On a store shared by several nodes they are claimed for
    /// `node` until `now + leaseMs` (`FOR UPDATE SKIP LOCKED`), skipping rows that another
    /// node's unexpired claim holds, so that a dead node's claims pass to the others once their
    /// lease runs out; a single-node store claims nothing.
    func claimWakeUps(dueBefore horizon: Date, now: Date, node: String, leaseMs: Int64, limit: Int) async throws -> [WakeUp]
    func wakeUp(of session: SessionID) async throws -> Date?

    // Server settings (e.g. signing keys): returns the stored value, saving `value` if there was none.
    func settingSavingIfAbsent(_ key: String, value: String) async throws -> String

    // Completion callbacks: a durable outbox, one delivery per execution.
    /// Adds a delivery unless its execution already has one. True when it was added;
    /// `StoreError.sessionNotFound` when its session does not exist.
    @discardableResult
    func enqueueCallback(_ delivery: CallbackDelivery) async throws -> Bool
    /// Deliveries due at or before `date`, earliest first, at most `limit`.
    func dueCallbacks(before date: Date, limit: Int) async throws -> [CallbackDelivery]
    /// When the earliest pending delivery is due; nil when none is pending.
    func nextCallbackDue() async throws -> Date?
    /// A delivery got through: it leaves the outbox. False when it was not there (its session was deleted).
    @discardableResult
    func markCallbackDelivered(_ id: UUID) async throws -> Bool
    /// An attempt failed and will be tried again: attempts + 1, the next attempt's time, the error.
    func rescheduleCallback(_ id: UUID, nextAttemptAt: Date, lastError: String) async throws
    /// A delivery was given up: it leaves the outbox. False when it was not there.
    @discardableResult
    func markCallbackFailed(_ id: UUID) async throws -> Bool

    /// Whether the store answers, for a store that can be away (a database server); nil for one
    /// that is part of this process (memory, an SQLite file).
    var availability: StoreAvailability? { get }
}

extension SessionStore {
    public var availability: StoreAvailability? { nil }

    public func update<Output: Sendable>(
        _ id: SessionID, _ decide: @escaping @Sendable (SessionState?) throws -> Decision<Output>
    ) async throws -> Committed<Output> {
        try await update(id, forRules: false, decide)
    }

    public func insertSession(_ session: SessionRecord, wakeUp: Date?) async throws {
        try await insertSession(session, wakeUp: wakeUp, maxOwnerRuntimes: nil)
    }

    /// A new session without a wake-up.
    public func insertSession(_ session: SessionRecord) async throws {
        try await insertSession(session, wakeUp: nil)
    }
}
