import CloudAgentCore
import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle

/// The `SessionStore` for several nodes on one PostgreSQL database.
///
/// It keeps the SQLite store's tables and rules (PostgresMigrations): a session is a JSON record
/// plus the columns queries need, executions are rows, events an append-only table keyed by
/// (session, id), wake-ups a table indexed by due time, and two outboxes (callbacks, runtime
/// commands). Every write to a session first locks its row (`SELECT … FOR UPDATE`), so that the
/// changes of one session are serialized across nodes as SQLite's single writer serializes them
/// in one process.
///
/// It is also the `Service` that runs its connection pool: queries wait until `run()` is
/// running, so put the store in the process's `ServiceGroup` (or run it in a task) and call
/// `migrate()` before serving.
///
/// A store given a `nodeId` is one node of several: each change it commits also notifies the
/// others (`changesChannel`, heard by `PostgresCluster`), the wake-ups it writes are claimed for
/// it, and the callback deliveries it hands out are claimed so that no other node sends them
/// while the claim lives. Without one it behaves as the only node.
public final class PostgresSessionStore: SessionStore, Service {
    /// The PostgreSQL notification channel of change notices (`ChangeNotice.payload`).
    public static let changesChannel = "cloud_agent_changes"

    private let client: PostgresClient
    private let logger: Logger
    /// This node's id, nil for a store that is the only node (no notices, no claims of its own).
    private let nodeId: String?
    /// How long a wake-up this node writes stays claimed for it: the writer arms it itself,
    /// and another node takes it over only once the claim has lapsed.
    private let wakeUpLeaseMs: Int64
    /// How long a callback delivery handed out by `dueCallbacks` stays this node's: longer than
    /// an attempt takes, so that no other node sends it meanwhile.
    private let callbackLeaseMs: Int64
    /// Every operation's outcome: whether the database answers, and since when.
    public let availability: StoreAvailability?

    public init(
        configuration: PostgresConfiguration, logger: Logger = Logger(label: "cloud-agent.postgres"), nodeId: String? = nil,
        wakeUpLeaseMs: Int64 = 5_000, callbackLeaseMs: Int64 = 60_000, clock: any WallClock = SystemWallClock()
    ) throws {
        availability = StoreAvailability(clock: clock)
        client = PostgresClient(configuration: try configuration.clientConfiguration(), backgroundLogger: logger)
        self.logger = logger
        self.nodeId = nodeId
        self.wakeUpLeaseMs = wakeUpLeaseMs
        self.callbackLeaseMs = callbackLeaseMs
    }

    /// The node claims are made for: this node, or "" for the only one.
    private var claimant: String { nodeId ?? "" }

    /// Runs the connection pool until the task is cancelled or the group shuts down gracefully.
    public func run() async {
        await client.run()
    }

    /// Applies the migrations not applied yet, each once, in order, in one transaction that holds
    /// an advisory lock: nodes that start at once wait for each other instead of racing.
    public func migrate() async throws {
        try await transaction { connection in
            try await connection.run("SELECT pg_advisory_xact_lock(\(PostgresMigrations.advisoryLockKey))", self.logger)
            try await connection.run(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """,
                self.logger
            )
            let applied = Set(try await connection.rows("SELECT version FROM schema_migrations", self.logger).map { try $0.decode(Int.self) })
            for migration in PostgresMigrations.all where !applied.contains(migration.version) {
                for statement in migration.statements {
                    try await connection.run(PostgresQuery(unsafeSQL: statement), self.logger)
                }
                try await connection.run("INSERT INTO schema_migrations (version, name) VALUES (\(migration.version), \(migration.name))", self.logger)
                self.logger.info("applied migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
            }
        }
    }

    // MARK: Tokens

    public func saveToken(hash: String, owner: Owner, createdAt: Date) async throws {
        try await query(
            """
            INSERT INTO api_tokens (hash, owner_user, owner_org, created_at) VALUES (\(hash), \(owner.user), \(owner.org), \(createdAt.millisecondsSince1970))
            ON CONFLICT (hash) DO UPDATE SET owner_user = excluded.owner_user, owner_org = excluded.owner_org, created_at = excluded.created_at
            """
        )
    }

    public func owner(forTokenHash hash: String) async throws -> Owner? {
        try await query("SELECT owner_user, owner_org FROM api_tokens WHERE hash = \(hash)").first.map { row in
            let (user, org) = try row.decode((String, String?).self)
            return Owner(user: user, org: org)
        }
    }

    // MARK: Sessions

    public func insertSession(_ session: SessionRecord, wakeUp: Date?, maxOwnerRuntimes: Int?) async throws {
        let record = try RecordCoding.encode(session)
        try await transaction { connection in
            if let maxOwnerRuntimes, try await self.lockedLiveCount(of: session.owner, on: connection) >= maxOwnerRuntimes {
                throw StoreError.quotaExceeded(maxOwnerRuntimes)
            }
            let inserted = try await connection.rows(
                """
                INSERT INTO sessions (id, owner_user, owner_org, created_at, runtime_state, record)
                VALUES (\(session.id.rawValue), \(session.owner.user), \(session.owner.org ?? ""), \(session.createdAt.millisecondsSince1970),
                    \(session.runtime.state.rawValue), \(record))
                ON CONFLICT (id) DO NOTHING
                RETURNING 1
                """,
                self.logger
            )
            guard !inserted.isEmpty else { throw StoreError.duplicateSession(session.id) }
            if let wakeUp {
                let claim = self.writerClaim()
                try await connection.run(
                    """
                    INSERT INTO wake_ups (session_id, due_at, claimed_by, claim_until)
                    VALUES (\(session.id.rawValue), \(wakeUp.millisecondsSince1970), \(claim.node), \(claim.until))
                    """,
                    self.logger
                )
            }
            try await self.announce(
                ChangeNotice(node: self.claimant, sessionId: session.id.rawValue, host: session.runtime.hostNode, runtime: session.runtime.state.rawValue),
                on: connection
            )
        }
    }

    public func session(_ id: SessionID) async throws -> SessionRecord? {
        try await query("SELECT record FROM sessions WHERE id = \(id.rawValue)").first.map { row in
            try RecordCoding.decode(SessionRecord.self, from: try row.decode(String.self))
        }
    }

    public func sessions(owner: Owner, limit: Int, after cursor: SessionCursor?) async throws -> [SessionRecord] {
        let rows =
            if let cursor {
                try await query(
                    """
                    SELECT record FROM sessions
                    WHERE owner_user = \(owner.user) AND owner_org = \(owner.org ?? "")
                        AND (created_at, id) < (\(cursor.createdAt.millisecondsSince1970), \(cursor.id.rawValue))
                    ORDER BY created_at DESC, id DESC LIMIT \(limit)
                    """
                )
            } else {
                try await query(
                    """
                    SELECT record FROM sessions WHERE owner_user = \(owner.user) AND owner_org = \(owner.org ?? "")
                    ORDER BY created_at DESC, id DESC LIMIT \(limit)
                    """
                )
            }
        return try rows.map { try RecordCoding.decode(SessionRecord.self, from: try $0.decode(String.self)) }
    }

    public func sessions(withRuntimeIn states: Set<RuntimeState>) async throws -> [SessionRecord] {
        guard !states.isEmpty else { return [] }
        let names = states.map(\.rawValue).sorted()
        return try await query("SELECT record FROM sessions WHERE runtime_state = ANY(\(names)) ORDER BY id").map {
            try RecordCoding.decode(SessionRecord.self, from: try $0.decode(String.self))
        }
    }

    public func deleteSession(_ id: SessionID) async throws -> Bool {
        guard nodeId != nil else { return try await !query("DELETE FROM sessions WHERE id = \(id.rawValue) RETURNING 1").isEmpty }
        return try await transaction { connection in
            guard let row = try await connection.rows("DELETE FROM sessions WHERE id = \(id.rawValue) RETURNING record", self.logger).first else {
                return false
            }
            // The deleted record names the host that must stop the session's runtime; a record
            // that no longer reads still gets its notice, without a host.
            let previous = try? RecordCoding.decode(SessionRecord.self, from: try row.decode(String.self))
            try await self.announce(
                ChangeNotice(node: self.claimant, sessionId: id.rawValue, host: previous?.runtime.hostNode, runtime: "deleted"), on: connection
            )
            return true
        }
    }

    @discardableResult
    public func commit(_ change: SessionChange) async throws -> [Event] {
        let encoded = try EncodedChange(change)
        return try await mappingConstraintViolations(of: change.sessionId) {
            try await transaction { connection in
                // A deletion's notice names the deleted record's host: read it only then.
                let readsPrevious = change.deletesSession && self.nodeId != nil
                guard
                    let row = try await connection.rows(
                        """
                        SELECT last_event_id, CASE WHEN \(readsPrevious) THEN record END
                        FROM sessions WHERE id = \(change.sessionId.rawValue) FOR UPDATE
                        """,
                        self.logger
                    ).first
                else {
                    throw StoreError.sessionNotFound(change.sessionId)
                }
                let (lastEventId, previousRecord) = try row.decode((Int64, String?).self)
                let events = try await self.apply(change, encoded, lastEventId: lastEventId, on: connection)
                let previous = previousRecord.flatMap { try? RecordCoding.decode(SessionRecord.self, from: $0) }
                try await self.announce(change, events: events, previous: previous, on: connection)
                return events
            }
        }
    }

    /// One transaction: the session's row locked (`FOR UPDATE`) and read with its execution, the
    /// decision made, its change applied, committed. A decision that throws rolls back, so it
    /// writes nothing; another node's change to the session waits for the lock.
    public func update<Output: Sendable>(
        _ id: SessionID, forRules: Bool, _ decide: @escaping @Sendable (SessionState?) throws -> Decision<Output>
    ) async throws -> Committed<Output> {
        // The decision may run in a task that outlives this call (a transaction stuck on a
        // database that went away is left behind, `withDeadline`): it is escaping.
        try await mappingConstraintViolations(of: id) {
            try await transaction { connection in
                // One round trip: the session locked, its active (else latest) execution, and
                // what only the rules need. Each statement is a round trip, and on a loaded
                // machine each costs both processes CPU: a stop is two of these transactions.
                let row = try await connection.rows(Self.stateQuery(of: id, forRules: forRules), self.logger).first?.makeRandomAccess()
                var state: SessionState?
                var lastEventId: Int64?
                if let row {
                    let session = try RecordCoding.decode(SessionRecord.self, from: try row[0].decode(String.self))
                    lastEventId = try row[1].decode(Int64.self)
                    func date(_ index: Int) throws -> Date? { try row[index].decode(Int64?.self).map { Date(millisecondsSince1970: $0) } }
                    // The queue's head, for the rules: one more round trip, only while a queue waits.
                    let nextQueued: Execution? =
                        if forRules, let next = session.queue.first {
                            try await self.executions("WHERE id = \(next.rawValue)", on: connection).first
                        } else { nil }
                    // A decision may start a stopped runtime: the owner's live runtimes, counted under the owner's lock.
                    let ownerRuntimes: Int? =
                        if forRules, session.runtime.state == .stopped || session.runtime.state == .stopping {
                            try await self.lockedLiveCount(of: session.owner, on: connection)
                        } else { nil }
                    state = SessionState(
                        session: session, execution: try Self.execution(from: row, at: 4),
                        oldestEventAt: forRules ? try date(2) : nil, wakeUp: forRules ? try date(3) : nil, nextQueued: nextQueued,
                        ownerRuntimes: ownerRuntimes
                    )
                }
                let decision = try decide(state)
                guard let change = decision.change else {
                    return Committed(output: decision.output, effects: decision.effects, events: [], change: nil)
                }
                guard let lastEventId else { throw StoreError.sessionNotFound(change.sessionId) }
                let events = try await self.apply(change, try EncodedChange(change), lastEventId: lastEventId, on: connection)
                try await self.announce(change, events: events, previous: state?.session, on: connection)
                return Committed(output: decision.output, effects: decision.effects, events: events, change: change)
            }
        }
    }

    /// The owner's sessions whose runtime is starting or running, counted after taking the
    /// owner's advisory lock for the rest of the transaction: two transactions that may start a
    /// runtime for the same owner count one after the other (each takes its session's row lock
    /// first and this lock second, so no two wait for each other in a cycle).
    private func lockedLiveCount(of owner: Owner, on connection: PostgresConnection) async throws -> Int {
        let key = "cloud-agent.owner-runtimes/\(owner.user)/\(owner.org ?? "")"
        try await connection.run("SELECT pg_advisory_xact_lock(hashtextextended(\(key), 0))", logger)
        let rows = try await connection.rows(
            """
            SELECT COUNT(*) FROM sessions WHERE owner_user = \(owner.user) AND owner_org = \(owner.org ?? "")
                AND runtime_state IN ('starting', 'running')
            """, logger)
        return Int(try rows.first?.decode(Int64.self) ?? 0)
    }

    public func liveSessions(of owner: Owner) async throws -> [SessionRecord] {
        try await query(
            """
            SELECT record FROM sessions WHERE owner_user = \(owner.user) AND owner_org = \(owner.org ?? "")
                AND runtime_state IN ('starting', 'running')
            """
        ).map { try RecordCoding.decode(SessionRecord.self, from: try $0.decode(String.self)) }
    }

    /// Events per INSERT statement: six parameters each, well under the protocol's 65,535.
    private static let eventsPerInsert = 1_000

    /// Writes a change inside the caller's transaction, which holds the session's row lock.
    private func apply(_ change: SessionChange, _ encoded: EncodedChange, lastEventId: Int64, on connection: PostgresConnection) async throws -> [Event] {
        let id = change.sessionId.rawValue
        if change.deletesSession {
            try await connection.run("DELETE FROM sessions WHERE id = \(id)", logger)
            return change.events.enumerated().map { Event(id: lastEventId + Int64($0.offset) + 1, sessionId: change.sessionId, $0.element) }
        }
        if let session = change.session, let record = encoded.session {
            try await connection.run("UPDATE sessions SET record = \(record), runtime_state = \(session.runtime.state.rawValue) WHERE id = \(id)", logger)
        }
        for execution in change.executions { try await save(execution, on: connection) }
        for row in change.usage {
            try await connection.run(
                """
                INSERT INTO usage_days (owner_user, owner_org, day, agent, input_tokens, output_tokens, cache_read_tokens,
                    cache_write_tokens, cost_usd, executions)
                VALUES (\(row.owner.user), \(row.owner.org ?? ""), \(row.day), \(row.agent), \(row.usage.inputTokens),
                    \(row.usage.outputTokens), \(row.usage.cacheReadTokens), \(row.usage.cacheWriteTokens), \(row.usage.costUsd),
                    \(row.executions))
                ON CONFLICT (owner_user, owner_org, day, agent) DO UPDATE SET
                    input_tokens = usage_days.input_tokens + excluded.input_tokens,
                    output_tokens = usage_days.output_tokens + excluded.output_tokens,
                    cache_read_tokens = usage_days.cache_read_tokens + excluded.cache_read_tokens,
                    cache_write_tokens = usage_days.cache_write_tokens + excluded.cache_write_tokens,
                    cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN usage_days.cost_usd
                        ELSE COALESCE(usage_days.cost_usd, 0) + excluded.cost_usd END,
                    executions = usage_days.executions + excluded.executions
                """, logger)
        }
        for cancelled in change.cancelledQueued {
            try await connection.run("DELETE FROM executions WHERE id = \(cancelled.rawValue) AND session_id = \(id) AND status = 'queued'", logger)
        }
        if let new = change.newExecution {
            if new.status.isActive,
                let active = try await connection.rows(
                    "SELECT id FROM executions WHERE session_id = \(id) AND status IN ('pending', 'running') AND id <> \(new.id.rawValue) LIMIT 1", logger
                ).first, let activeId = ExecutionID(rawValue: try active.decode(String.self))
            {
                throw StoreError.executionInProgress(activeId)
            }
            try await save(new, on: connection)
        }
        var appended: [Event] = []
        if !change.events.isEmpty {
            let count = Int64(change.events.count)
            guard
                let last = try await connection.rows(
                    "UPDATE sessions SET last_event_id = last_event_id + \(count) WHERE id = \(id) RETURNING last_event_id", logger
                ).first?.decode(Int64.self)
            else {
                throw StoreError.sessionNotFound(change.sessionId)
            }
            appended = change.events.enumerated().map { Event(id: last - count + Int64($0.offset) + 1, sessionId: change.sessionId, $0.element) }
            let rows = Array(zip(appended, encoded.eventData))
            for start in stride(from: 0, to: rows.count, by: Self.eventsPerInsert) {
                try await insertEvents(rows[start..<min(start + Self.eventsPerInsert, rows.count)], of: id, on: connection)
            }
        }
        switch change.wakeUp {
        case .none: break
        case .some(.none): try await connection.run("DELETE FROM wake_ups WHERE session_id = \(id)", logger)
        case .some(.some(let due)):
            let claim = writerClaim()
            try await connection.run(
                """
                INSERT INTO wake_ups (session_id, due_at, claimed_by, claim_until)
                VALUES (\(id), \(due.millisecondsSince1970), \(claim.node), \(claim.until))
                ON CONFLICT (session_id) DO UPDATE SET
                    due_at = excluded.due_at, claimed_by = excluded.claimed_by, claim_until = excluded.claim_until
                """,
                logger
            )
        }
        for (delivery, headers) in zip(change.callbacks, encoded.callbackHeaders) {
            _ = try await insert(delivery, headers: headers, on: connection)
        }
        if let cutoff = change.deleteEventsBefore {
            try await connection.run("DELETE FROM events WHERE session_id = \(id) AND at < \(cutoff.millisecondsSince1970)", logger)
        }
        for drop in change.dropCommands {
            switch drop {
            case .all:
                try await connection.run("DELETE FROM runtime_commands WHERE session_id = \(id)", logger)
            case .settings:
                try await connection.run("DELETE FROM runtime_commands WHERE session_id = \(id) AND kind = 'settings'", logger)
            case .execution(let executionId, let kinds):
                try await connection.run(
                    """
                    DELETE FROM runtime_commands
                    WHERE session_id = \(id) AND execution_id = \(executionId.rawValue) AND kind = ANY(\(kinds.sorted()))
                    """,
                    logger
                )
            }
        }
        // A row equal to one already there (same kind, same execution) is not added twice; a
        // `settings` row has no execution and is always added.
        for (command, json) in zip(change.commands, encoded.commands) {
            try await connection.run(
                """
                INSERT INTO runtime_commands (session_id, kind, execution_id, command)
                VALUES (\(id), \(command.kind), \(command.executionId?.rawValue), \(json))
                ON CONFLICT DO NOTHING
                """,
                logger
            )
        }
        return appended
    }

    /// The claim a wake-up written by this node gets: its writer arms it (it knows the session
    /// best, and another node would only race it), until the lease lapses; none for the only node.
    private func writerClaim() -> (node: String?, until: Int64?) {
        guard let nodeId else { return (nil, nil) }
        return (nodeId, Date().adding(milliseconds: wakeUpLeaseMs).millisecondsSince1970)
    }

    /// Tells the other nodes of a change, inside the caller's transaction: PostgreSQL delivers
    /// the notification once the transaction commits, and drops it when it rolls back.
    private func announce(_ change: SessionChange, events: [Event], previous: SessionRecord?, on connection: PostgresConnection) async throws {
        guard let nodeId else { return }
        try await announce(ChangeNotice(node: nodeId, change: change, events: events, record: change.session, previous: previous), on: connection)
    }

    private func announce(_ notice: ChangeNotice, on connection: PostgresConnection) async throws {
        guard nodeId != nil else { return }
        try await connection.run("SELECT pg_notify(\(Self.changesChannel), \(notice.payload))", logger)
    }

    /// One multi-row INSERT of numbered events.
    private func insertEvents(_ rows: ArraySlice<(Event, String)>, of session: String, on connection: PostgresConnection) async throws {
        var sql = "INSERT INTO events (session_id, id, execution_id, type, at, data) VALUES "
        var binds = PostgresBindings(capacity: 1 + rows.count * 5)
        binds.append(session)
        for (index, (event, data)) in rows.enumerated() {
            let first = 2 + index * 5
            if index > 0 { sql += ", " }
            sql += "($1, $\(first)::bigint, $\(first + 1)::text, $\(first + 2)::text, $\(first + 3)::bigint, $\(first + 4)::text)"
            binds.append(event.id)
            binds.append(event.executionId?.rawValue)
            binds.append(event.type)
            binds.append(event.at.millisecondsSince1970)
            binds.append(data)
        }
        try await connection.run(PostgresQuery(unsafeSQL: sql, binds: binds), logger)
    }

    public func commands(of session: SessionID, after id: Int64) async throws -> [QueuedCommand] {
        try await query("SELECT id, command FROM runtime_commands WHERE session_id = \(session.rawValue) AND id > \(id) ORDER BY id").map { row in
            let (id, command) = try row.decode((Int64, String).self)
            return QueuedCommand(id: id, sessionId: session, command: try RecordCoding.decode(OutboxCommand.self, from: command))
        }
    }

    // MARK: Executions

    private func save(_ execution: Execution, on connection: PostgresConnection) async throws {
        try await connection.run(
            """
            INSERT INTO executions (id, session_id, status, prompt, mode, model, started_at, running_at, last_heartbeat,
                completed_at, exit_code, error, interrupt_reason, progress_events, last_event_at, stuck_reported_at,
                end_reported_by_runtime, queued_at, usage)
            VALUES (\(execution.id.rawValue), \(execution.sessionId.rawValue), \(execution.status.rawValue), \(execution.prompt),
                \(execution.mode), \(execution.model), \(execution.startedAt.millisecondsSince1970),
                \(execution.runningAt?.millisecondsSince1970), \(execution.lastHeartbeat?.millisecondsSince1970),
                \(execution.completedAt?.millisecondsSince1970), \(execution.exitCode), \(execution.error),
                \(execution.interruptReason), \(execution.progressEvents), \(execution.lastEventAt?.millisecondsSince1970),
                \(execution.stuckReportedAt?.millisecondsSince1970), \(execution.endReportedByRuntime),
                \(execution.queuedAt?.millisecondsSince1970), \(try execution.usage.map { try RecordCoding.encode($0) }))
            ON CONFLICT (id) DO UPDATE SET status = excluded.status, started_at = excluded.started_at, running_at = excluded.running_at,
                last_heartbeat = GREATEST(executions.last_heartbeat, excluded.last_heartbeat),
                completed_at = excluded.completed_at, exit_code = excluded.exit_code, error = excluded.error,
                interrupt_reason = excluded.interrupt_reason, progress_events = excluded.progress_events,
                last_event_at = excluded.last_event_at, stuck_reported_at = excluded.stuck_reported_at,
                end_reported_by_runtime = excluded.end_reported_by_runtime, usage = excluded.usage
            """,
            logger
        )
    }

    private static let executionColumns = """
        id, session_id, status, prompt, mode, model, started_at, running_at, last_heartbeat, completed_at, exit_code, error,
        interrupt_reason, progress_events, last_event_at, stuck_reported_at, end_reported_by_runtime, queued_at, usage
        """

    /// The state `update` decides on, in one statement: the session's record and last event id
    /// (its row locked), the oldest event's time and the stored wake-up (for the rules only), then
    /// the execution's columns: the active one (pending or running: at most one), else the latest.
    private static func stateQuery(of id: SessionID, forRules: Bool) -> PostgresQuery {
        let rules =
            forRules
            ? "(SELECT at FROM events WHERE session_id = s.id ORDER BY id LIMIT 1), (SELECT due_at FROM wake_ups WHERE session_id = s.id)"
            : "NULL::BIGINT, NULL::BIGINT"
        var binds = PostgresBindings()
        binds.append(id.rawValue)
        return PostgresQuery(
            unsafeSQL: """
                SELECT s.record, s.last_event_id, \(rules), \(executionColumns.split(separator: ",").map { "e." + $0.trimmingCharacters(in: .whitespacesAndNewlines) }.joined(separator: ", "))
                FROM sessions s
                LEFT JOIN LATERAL (
                    SELECT * FROM executions WHERE session_id = s.id AND status <> 'queued'
                    ORDER BY status IN ('pending', 'running') DESC, id DESC LIMIT 1
                ) e ON TRUE
                WHERE s.id = $1
                FOR UPDATE OF s
                """, binds: binds)
    }

    /// Executions selected by a condition (`WHERE …`, ordering, limit), on a connection or the pool.
    private func executions(_ condition: PostgresQuery, on connection: PostgresConnection? = nil) async throws -> [Execution] {
        let query = PostgresQuery(unsafeSQL: "SELECT \(Self.executionColumns) FROM executions \(condition.sql)", binds: condition.binds)
        let rows = if let connection { try await connection.rows(query, logger) } else { try await self.query(query) }
        return try rows.compactMap(Self.execution(from:))
    }

    static func execution(from row: PostgresRow) throws -> Execution? {
        try execution(from: row.makeRandomAccess(), at: 0)
    }

    /// The execution in `executionColumns` from column `offset` on; nil when there is none (a
    /// join that found no execution) or it does not read.
    static func execution(from row: PostgresRandomAccessRow, at offset: Int) throws -> Execution? {
        guard let id = try row[offset].decode(String?.self) else { return nil }
        func column<T: PostgresDecodable>(_ index: Int, _ type: T.Type = T.self) throws -> T { try row[offset + index].decode(T.self) }
        let sessionId: String = try column(1), status: String = try column(2), prompt: String = try column(3)
        let mode: String? = try column(4), model: String? = try column(5), startedAt: Int64 = try column(6)
        let runningAt: Int64? = try column(7), lastHeartbeat: Int64? = try column(8), completedAt: Int64? = try column(9)
        let exitCode: Int? = try column(10), error: String? = try column(11), interruptReason: String? = try column(12)
        let progressEvents: Int = try column(13), lastEventAt: Int64? = try column(14), stuckReportedAt: Int64? = try column(15)
        let endReportedByRuntime: Bool = try column(16), queuedAt: Int64? = try column(17), usage: String? = try column(18)
        guard let executionId = ExecutionID(rawValue: id), let sessionId = SessionID(rawValue: sessionId),
            let status = ExecutionStatus(rawValue: status)
        else { return nil }
        func date(_ millis: Int64?) -> Date? { millis.map { Date(millisecondsSince1970: $0) } }
        var execution = Execution(
            id: executionId, sessionId: sessionId, prompt: prompt, mode: mode, model: model, acceptedAt: Date(millisecondsSince1970: startedAt)
        )
        execution.status = status
        execution.runningAt = date(runningAt)
        execution.lastHeartbeat = date(lastHeartbeat)
        execution.completedAt = date(completedAt)
        execution.exitCode = exitCode
        execution.error = error
        execution.interruptReason = interruptReason
        execution.progressEvents = progressEvents
        execution.lastEventAt = date(lastEventAt)
        execution.stuckReportedAt = date(stuckReportedAt)
        execution.endReportedByRuntime = endReportedByRuntime
        execution.queuedAt = date(queuedAt)
        execution.usage = usage.flatMap { try? RecordCoding.decode(Usage.self, from: $0) }
        return execution
    }

    public func execution(_ id: ExecutionID) async throws -> Execution? {
        try await executions("WHERE id = \(id.rawValue)").first
    }

    public func executions(of session: SessionID) async throws -> [Execution] {
        try await executions("WHERE session_id = \(session.rawValue) ORDER BY id")
    }

    public func latestExecution(of session: SessionID) async throws -> Execution? {
        try await executions("WHERE session_id = \(session.rawValue) AND status <> 'queued' ORDER BY id DESC LIMIT 1").first
    }

    public func usage(of owner: Owner, from: String, to: String) async throws -> [UsageDay] {
        let rows = try await query(
            """
            SELECT day, agent, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, executions FROM usage_days
            WHERE owner_user = \(owner.user) AND owner_org = \(owner.org ?? "") AND day >= \(from) AND day <= \(to) ORDER BY day, agent
            """)
        return try rows.map { row in
            let (day, agent, input, output, cacheRead, cacheWrite, cost, executions) = try row.decode(
                (String, String, Int64, Int64, Int64, Int64, Double?, Int64).self)
            return UsageDay(
                owner: owner, day: day, agent: agent,
                usage: Usage(inputTokens: input, outputTokens: output, cacheReadTokens: cacheRead, cacheWriteTokens: cacheWrite, costUsd: cost),
                executions: executions)
        }
    }

    @discardableResult
    public func recordHeartbeats(_ heartbeats: [Heartbeat]) async throws -> Int {
        guard !heartbeats.isEmpty else { return 0 }
        return try await transaction { connection in
            var changed = 0
            // In one order (by execution), so that two batches naming the same executions cannot
            // deadlock on their rows; the latest heartbeat wins whatever the order.
            for beat in heartbeats.sorted(by: { $0.executionId < $1.executionId }) {
                let at = beat.at.millisecondsSince1970
                changed += try await connection.rows(
                    """
                    UPDATE executions SET last_heartbeat = \(at)
                    WHERE id = \(beat.executionId.rawValue) AND status = 'running' AND COALESCE(last_heartbeat, 0) < \(at)
                    RETURNING 1
                    """,
                    self.logger
                ).count
            }
            return changed
        }
    }

    // MARK: Events

    public func events(of session: SessionID, _ query: EventQuery) async throws -> [Event] {
        var sql = "SELECT id, execution_id, type, at, data FROM events WHERE session_id = $1 AND id > $2"
        var binds = PostgresBindings(capacity: 5)
        binds.append(session.rawValue)
        binds.append(query.afterId)
        if let executionId = query.executionId {
            binds.append(executionId.rawValue)
            sql += " AND execution_id = $\(binds.count)"
        }
        if let types = query.types {
            binds.append(types.sorted())
            sql += " AND type = ANY($\(binds.count))"
        }
        binds.append(query.limit)
        sql += " ORDER BY id LIMIT $\(binds.count)"
        return try await self.query(PostgresQuery(unsafeSQL: sql, binds: binds)).map { row in
            let (id, executionId, type, at, data) = try row.decode((Int64, String?, String, Int64, String).self)
            return Event(
                id: id, sessionId: session, executionId: executionId.flatMap(ExecutionID.init(rawValue:)), type: type,
                at: Date(millisecondsSince1970: at), data: try RecordCoding.decode([String: JSONValue].self, from: data)
            )
        }
    }

    public func lastEventId(of session: SessionID) async throws -> Int64 {
        try await query("SELECT last_event_id FROM sessions WHERE id = \(session.rawValue)").first?.decode(Int64.self) ?? 0
    }

    public func oldestEventAt(of session: SessionID) async throws -> Date? {
        // Events are appended in time order, so the lowest id is the oldest.
        try await query("SELECT at FROM events WHERE session_id = \(session.rawValue) ORDER BY id LIMIT 1").first
            .map { Date(millisecondsSince1970: try $0.decode(Int64.self)) }
    }

    @discardableResult
    public func deleteEvents(of session: SessionID, olderThan date: Date) async throws -> Int {
        try await query(
            """
            WITH deleted AS (DELETE FROM events WHERE session_id = \(session.rawValue) AND at < \(date.millisecondsSince1970) RETURNING 1)
            SELECT count(*) FROM deleted
            """
        ).first?.decode(Int.self) ?? 0
    }

    // MARK: Wake-ups and settings

    public func wakeUps() async throws -> [WakeUp] {
        try await query("SELECT session_id, due_at FROM wake_ups ORDER BY due_at, session_id").compactMap { row in
            let (session, due) = try row.decode((String, Int64).self)
            return SessionID(rawValue: session).map { WakeUp(sessionId: $0, dueAt: Date(millisecondsSince1970: due)) }
        }
    }

    /// One statement: the due rows that are free (never claimed, their claim lapsed, or `node`'s
    /// own, which it renews) are locked, skipping rows another node is claiming at this moment
    /// (`SKIP LOCKED`), and claimed for `node` until `now + leaseMs`.
    public func claimWakeUps(dueBefore horizon: Date, now: Date, node: String, leaseMs: Int64, limit: Int) async throws -> [WakeUp] {
        let nowMs = now.millisecondsSince1970
        let claimed = try await query(
            """
            UPDATE wake_ups SET claimed_by = \(node), claim_until = \(nowMs + leaseMs)
            WHERE session_id IN (
                SELECT session_id FROM wake_ups
                WHERE due_at < \(horizon.millisecondsSince1970) AND (claim_until IS NULL OR claim_until < \(nowMs) OR claimed_by = \(node))
                ORDER BY due_at LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            )
            RETURNING session_id, due_at
            """
        ).compactMap { row in
            let (session, due) = try row.decode((String, Int64).self)
            return SessionID(rawValue: session).map { WakeUp(sessionId: $0, dueAt: Date(millisecondsSince1970: due)) }
        }
        // RETURNING follows no order.
        return claimed.sorted { ($0.dueAt, $0.sessionId.rawValue) < ($1.dueAt, $1.sessionId.rawValue) }
    }

    public func wakeUp(of session: SessionID) async throws -> Date? {
        try await query("SELECT due_at FROM wake_ups WHERE session_id = \(session.rawValue)").first
            .map { Date(millisecondsSince1970: try $0.decode(Int64.self)) }
    }

    public func settingSavingIfAbsent(_ key: String, value: String) async throws -> String {
        // Two statements, each with its own snapshot: when another node inserted the key first,
        // the second statement sees its value.
        try await query("INSERT INTO settings (key, value) VALUES (\(key), \(value)) ON CONFLICT (key) DO NOTHING")
        return try await query("SELECT value FROM settings WHERE key = \(key)").first?.decode(String.self) ?? value
    }

    // MARK: Callbacks

    @discardableResult
    public func enqueueCallback(_ delivery: CallbackDelivery) async throws -> Bool {
        let headers = try RecordCoding.encode(delivery.headers)
        return try await transaction { connection in
            // The key-share lock keeps the session from being deleted until this commits.
            guard try await !connection.rows("SELECT 1 FROM sessions WHERE id = \(delivery.sessionId.rawValue) FOR KEY SHARE", self.logger).isEmpty else {
                throw StoreError.sessionNotFound(delivery.sessionId)
            }
            return try await self.insert(delivery, headers: headers, on: connection)
        }
    }

    /// One delivery into the outbox; false when its execution has one already.
    private func insert(_ delivery: CallbackDelivery, headers: String, on connection: PostgresConnection) async throws -> Bool {
        try await !connection.rows(
            """
            INSERT INTO callback_deliveries (id, session_id, execution_id, input_request_id, url, headers, body, attempts, next_attempt_at,
                created_at, last_error)
            VALUES (\(delivery.id.uuidString.lowercased()), \(delivery.sessionId.rawValue), \(delivery.executionId.rawValue),
                \(delivery.requestId ?? ""), \(delivery.url),
                \(headers), \(delivery.body), \(delivery.attempts), \(delivery.nextAttemptAt.millisecondsSince1970),
                \(delivery.createdAt.millisecondsSince1970), \(delivery.lastError))
            ON CONFLICT DO NOTHING
            RETURNING 1
            """,
            logger
        ).isEmpty
    }

    /// The due deliveries are claimed for this node until `callbackLeaseMs` from now, in one
    /// statement, skipping the rows another node's unexpired claim holds or that another node is
    /// claiming at this moment (`SKIP LOCKED`): two nodes never send the same delivery while its
    /// claim lives, and a dead node's deliveries pass to the others once it lapses. This node's
    /// own claims come back (it asks again only once it is done with an attempt).
    public func dueCallbacks(before date: Date, limit: Int) async throws -> [CallbackDelivery] {
        let now = Date().millisecondsSince1970
        let due = try await query(
            """
            UPDATE callback_deliveries SET claimed_by = \(claimant), claim_until = \(now + callbackLeaseMs)
            WHERE id IN (
                SELECT id FROM callback_deliveries
                WHERE next_attempt_at <= \(date.millisecondsSince1970)
                    AND (claimed_by IS NULL OR claim_until IS NULL OR claim_until < \(now) OR claimed_by = \(claimant))
                ORDER BY next_attempt_at, created_at, id LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id, session_id, execution_id, url, headers, body, attempts, next_attempt_at, created_at, last_error, input_request_id
            """
        ).compactMap { row -> CallbackDelivery? in
            let (id, sessionId, executionId, url, headers, body, attempts, nextAttemptAt, createdAt, lastError, requestId) =
                try row.decode((String, String, String, String, String, String, Int, Int64, Int64, String?, String).self)
            guard let id = UUID(uuidString: id), let sessionId = SessionID(rawValue: sessionId),
                let executionId = ExecutionID(rawValue: executionId)
            else { return nil }
            return CallbackDelivery(
                id: id, sessionId: sessionId, executionId: executionId, url: url,
                headers: try RecordCoding.decode([String: SealedValue].self, from: headers), body: body, attempts: attempts,
                nextAttemptAt: Date(millisecondsSince1970: nextAttemptAt), createdAt: Date(millisecondsSince1970: createdAt), lastError: lastError,
                requestId: requestId.isEmpty ? nil : requestId
            )
        }
        // RETURNING follows no order: the outbox's order (the ids are lowercase UUIDs in the table).
        return due.sorted {
            ($0.nextAttemptAt, $0.createdAt, $0.id.uuidString.lowercased()) < ($1.nextAttemptAt, $1.createdAt, $1.id.uuidString.lowercased())
        }
    }

    /// When this node could next deliver something: a delivery another node holds under an
    /// unexpired claim counts from the claim's end, not from its own due time.
    public func nextCallbackDue() async throws -> Date? {
        let now = Date().millisecondsSince1970
        return try await query(
            """
            SELECT MIN(CASE WHEN claimed_by IS NOT NULL AND claimed_by <> \(claimant) AND claim_until >= \(now)
                THEN GREATEST(next_attempt_at, claim_until) ELSE next_attempt_at END)
            FROM callback_deliveries
            """
        ).first?.decode(Int64?.self).map { Date(millisecondsSince1970: $0) }
    }

    @discardableResult
    public func markCallbackDelivered(_ id: UUID) async throws -> Bool { try await deleteCallback(id) }

    public func rescheduleCallback(_ id: UUID, nextAttemptAt: Date, lastError: String) async throws {
        try await query(
            """
            UPDATE callback_deliveries SET attempts = attempts + 1, next_attempt_at = \(nextAttemptAt.millisecondsSince1970), last_error = \(lastError),
                claimed_by = NULL, claim_until = NULL
            WHERE id = \(id.uuidString.lowercased())
            """
        )
    }

    @discardableResult
    public func markCallbackFailed(_ id: UUID) async throws -> Bool { try await deleteCallback(id) }

    private func deleteCallback(_ id: UUID) async throws -> Bool {
        try await !query("DELETE FROM callback_deliveries WHERE id = \(id.uuidString.lowercased()) RETURNING 1").isEmpty
    }

    // MARK: Queries and transactions

    /// One statement on a pooled connection, its rows read to the end (which returns the connection).
    /// Internal for `PostgresCluster`, which keeps its registry through the store's pool.
    @discardableResult
    func query(_ query: PostgresQuery) async throws -> [PostgresRow] {
        try await bounded { try await self.client.query(query, logger: self.logger).collect() }
    }

    /// How long an operation may wait for the database (a connection included) before it fails
    /// with `StoreError.unavailable`: a database that is down makes requests fail fast (503)
    /// instead of hanging, and nothing is lost once it is back.
    public static let operationTimeout: Duration = .seconds(5)

    /// Runs `body`, cancelled (and `StoreError.unavailable` thrown) after `operationTimeout`,
    /// even when it does not honour the cancellation (`withDeadline`). Its outcome says whether
    /// the database answers (`availability`).
    private func bounded<Result: Sendable>(_ body: @escaping @Sendable () async throws -> Result) async throws -> Result {
        do {
            let result = try await withDeadline(
                Self.operationTimeout,
                onTimeout: {
                    StoreError.unavailable("PostgreSQL did not answer within \(Self.operationTimeout)")
                }, body)
            availability?.answered()
            return result
        } catch {
            guard Self.isOutage(error) else { throw error }
            availability?.failed()
            // One error for every way the database can be out of reach, so that callers (the
            // API's 503, the engine's retries) need not know the driver's errors.
            if case StoreError.unavailable = error { throw error }
            throw StoreError.unavailable("PostgreSQL could not be reached (\(Self.outageKind(error)))")
        }
    }

    /// A short name for an outage error, for the log: the driver's error code, never its
    /// message (which may carry connection details).
    static func outageKind(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if error.code == .server, let state = error.serverInfo?[.sqlState] { return "SQLSTATE \(state)" }
            return "\(error.code)"
        }
        return String(reflecting: type(of: error))
    }

    /// Whether `error` says the database could not be reached (rather than that it answered
    /// with an error): no answer in time, a connection that failed or closed, a server shutting
    /// down or starting (SQLSTATE class 08, 57P01–57P03).
    static func isOutage(_ error: any Error) -> Bool {
        if case StoreError.unavailable = error { return true }
        // The pool's own error (its circuit breaker tripped: no connection could be made for a
        // long while) is not public API; it is recognised by its type's name.
        if String(reflecting: type(of: error)).hasSuffix("ConnectionPoolError") { return true }
        guard let error = error as? PSQLError else { return false }
        switch error.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown:
            return true
        case .server:
            let state = error.serverInfo?[.sqlState] ?? ""
            return state.hasPrefix("08") || ["57P01", "57P02", "57P03"].contains(state)
        default:
            return false
        }
    }

    /// Runs `body` between BEGIN and COMMIT on one connection; rolls back and rethrows what it
    /// threw (not wrapped, so that domain errors reach the caller as they are).
    private func transaction<Result: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> Result) async throws -> Result {
        try await bounded { try await self.transactionUnbounded(body) }
    }

    private func transactionUnbounded<Result: Sendable>(_ body: (PostgresConnection) async throws -> Result) async throws -> Result {
        try await client.withConnection { connection in
            try await connection.run("BEGIN", logger)
            let result: Result
            do {
                result = try await body(connection)
            } catch {
                do {
                    try await connection.run("ROLLBACK", logger)
                } catch let rollbackError {
                    // The connection is most likely broken; the pool drops a closed connection.
                    logger.warning("rollback failed", metadata: ["error": "\(String(reflecting: rollbackError))"])
                }
                throw error
            }
            try await connection.run("COMMIT", logger)
            return result
        }
    }

    /// Maps the unique and foreign-key violations a write to a session can meet to the domain's
    /// errors, as the SQLite store reports them: a second active execution (the partial unique
    /// index) is `executionInProgress` with the active one's id, a missing session
    /// `sessionNotFound`.
    private func mappingConstraintViolations<Result>(of session: SessionID, _ body: () async throws -> Result) async throws -> Result {
        do {
            return try await body()
        } catch let error as PSQLError
            where error.serverInfo?[.sqlState] == "23505"
            && error.serverInfo?[.constraintName] == "executions_one_active_per_session"
        {
            let active = try await executions("WHERE session_id = \(session.rawValue) AND status IN ('pending', 'running') LIMIT 1").first
            guard let active else { throw error }
            throw StoreError.executionInProgress(active.id)
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23503" {
            throw StoreError.sessionNotFound(session)
        }
    }
}

extension PostgresConnection {
    /// One statement, its rows read to the end.
    func rows(_ query: PostgresQuery, _ logger: Logger) async throws -> [PostgresRow] {
        try await self.query(query, logger: logger).collect()
    }

    /// One statement whose rows, if any, are not needed.
    func run(_ query: PostgresQuery, _ logger: Logger) async throws {
        _ = try await self.query(query, logger: logger).collect()
    }
}
