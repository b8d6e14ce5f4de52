import Foundation

/// A `SessionStore` in memory: for tests of the layers above the store, and the reference the
/// conformance suite holds the real backends to.
public actor InMemorySessionStore: SessionStore {
    private var tokens: [String: Owner] = [:]
    private var sessionsById: [SessionID: SessionRecord] = [:]
    private var executionsById: [ExecutionID: Execution] = [:]
    private var eventsBySession: [SessionID: [Event]] = [:]
    private var lastEventIds: [SessionID: Int64] = [:]
    private var wakeUpsBySession: [SessionID: Date] = [:]
    private var settings: [String: String] = [:]
    private var callbacksById: [UUID: CallbackDelivery] = [:]
    private var commandsBySession: [SessionID: [QueuedCommand]] = [:]
    private var lastCommandId: Int64 = 0
    private var updateHook: (@Sendable (SessionID) async -> Void)?

    public init() {}

    public func saveToken(hash: String, owner: Owner, createdAt: Date) { tokens[hash] = owner }
    public func owner(forTokenHash hash: String) -> Owner? { tokens[hash] }

    public func insertSession(_ session: SessionRecord, wakeUp: Date?, maxOwnerRuntimes: Int?) throws {
        guard sessionsById[session.id] == nil else { throw StoreError.duplicateSession(session.id) }
        if let maxOwnerRuntimes, liveSessions(of: session.owner).count >= maxOwnerRuntimes { throw StoreError.quotaExceeded(maxOwnerRuntimes) }
        sessionsById[session.id] = session
        if let wakeUp { wakeUpsBySession[session.id] = wakeUp }
    }

    public func session(_ id: SessionID) -> SessionRecord? { sessionsById[id] }

    public func liveSessions(of owner: Owner) -> [SessionRecord] {
        sessionsById.values.filter { $0.owner == owner && ($0.runtime.state == .starting || $0.runtime.state == .running) }
    }

    public func sessions(owner: Owner, limit: Int, after cursor: SessionCursor?) -> [SessionRecord] {
        let sorted = sessionsById.values
            .filter { $0.owner == owner }
            .sorted { ($0.createdAt, $0.id.rawValue) > ($1.createdAt, $1.id.rawValue) }
        let after = sorted.filter { session in
            guard let cursor else { return true }
            return (session.createdAt, session.id.rawValue) < (cursor.createdAt, cursor.id.rawValue)
        }
        return Array(after.prefix(max(0, limit)))
    }

    public func sessions(withRuntimeIn states: Set<RuntimeState>) -> [SessionRecord] {
        sessionsById.values.filter { states.contains($0.runtime.state) }.sorted { $0.id.rawValue < $1.id.rawValue }
    }

    public func deleteSession(_ id: SessionID) -> Bool {
        guard sessionsById.removeValue(forKey: id) != nil else { return false }
        executionsById = executionsById.filter { $0.value.sessionId != id }
        eventsBySession[id] = nil
        lastEventIds[id] = nil
        wakeUpsBySession[id] = nil
        callbacksById = callbacksById.filter { $0.value.sessionId != id }
        commandsBySession[id] = nil
        return true
    }

    public func commit(_ change: SessionChange) throws -> [Event] {
        guard sessionsById[change.sessionId] != nil else { throw StoreError.sessionNotFound(change.sessionId) }
        if change.deletesSession {
            let last = lastEventIds[change.sessionId] ?? 0
            let numbered = change.events.enumerated().map { Event(id: last + Int64($0.offset) + 1, sessionId: change.sessionId, $0.element) }
            _ = deleteSession(change.sessionId)
            return numbered
        }
        if let new = change.newExecution, new.status.isActive {
            let saved = change.executions.reduce(into: executionsById) { $0[$1.id] = $1 }
            if let active = saved.values.first(where: { $0.sessionId == change.sessionId && $0.status.isActive && $0.id != new.id }) {
                throw StoreError.executionInProgress(active.id)
            }
        }
        if let session = change.session { sessionsById[session.id] = session }
        for execution in change.executions + (change.newExecution.map { [$0] } ?? []) {
            var saved = execution
            // As in SQL: a saved copy never moves a recorded heartbeat back.
            if let recorded = executionsById[execution.id]?.lastHeartbeat {
                saved.lastHeartbeat = max(recorded, execution.lastHeartbeat ?? recorded)
            }
            executionsById[execution.id] = saved
        }
        for cancelled in change.cancelledQueued where executionsById[cancelled]?.status == .queued {
            executionsById[cancelled] = nil
        }
        for row in change.usage {
            let key = UsageKey(owner: row.owner, day: row.day, agent: row.agent)
            var day = usageDays[key] ?? UsageDay(owner: row.owner, day: row.day, agent: row.agent, usage: Usage(), executions: 0)
            day.usage = day.usage + row.usage
            day.executions += row.executions
            usageDays[key] = day
        }
        var appended: [Event] = []
        var last = lastEventIds[change.sessionId] ?? 0
        for event in change.events {
            last += 1
            appended.append(Event(id: last, sessionId: change.sessionId, event))
        }
        lastEventIds[change.sessionId] = last
        eventsBySession[change.sessionId, default: []].append(contentsOf: appended)
        if let wakeUp = change.wakeUp { wakeUpsBySession[change.sessionId] = wakeUp }
        for delivery in change.callbacks { _ = try enqueueCallback(delivery) }
        if let cutoff = change.deleteEventsBefore { _ = deleteEvents(of: change.sessionId, olderThan: cutoff) }
        var queue = commandsBySession[change.sessionId] ?? []
        for drop in change.dropCommands {
            queue.removeAll { row in
                switch drop {
                case .all: true
                case .settings: row.command.kind == "settings"
                case .execution(let id, let kinds): row.command.executionId == id && kinds.contains(row.command.kind)
                }
            }
        }
        for command in change.commands
        where command.executionId == nil
            || !queue.contains(where: {
                $0.command.kind == command.kind && $0.command.executionId == command.executionId
            })
        {
            lastCommandId += 1
            queue.append(QueuedCommand(id: lastCommandId, sessionId: change.sessionId, command: command))
        }
        commandsBySession[change.sessionId] = queue.isEmpty ? nil : queue
        return appended
    }

    /// Lets a test choose interleavings: `hook` runs before each `update` reads the session (the
    /// read, the decision and the write that follow are one step of this actor).
    public func setUpdateHook(_ hook: (@Sendable (SessionID) async -> Void)?) { updateHook = hook }

    public func update<Output: Sendable>(
        _ id: SessionID, forRules: Bool, _ decide: @escaping @Sendable (SessionState?) throws -> Decision<Output>
    ) async throws -> Committed<Output> {
        if let updateHook { await updateHook(id) }
        let state = sessionsById[id].map { session in
            SessionState(
                session: session,
                execution: session.activeExecutionId.flatMap { executionsById[$0] } ?? latestExecution(of: id),
                oldestEventAt: forRules ? oldestEventAt(of: id) : nil,
                wakeUp: forRules ? wakeUpsBySession[id] : nil,
                nextQueued: forRules ? session.queue.first.flatMap { executionsById[$0] } : nil,
                ownerRuntimes: forRules && (session.runtime.state == .stopped || session.runtime.state == .stopping)
                    ? liveSessions(of: session.owner).count : nil
            )
        }
        let decision = try decide(state)
        let events = try decision.change.map(commit) ?? []
        return Committed(output: decision.output, effects: decision.effects, events: events, change: decision.change)
    }

    public func commands(of session: SessionID, after id: Int64) -> [QueuedCommand] {
        (commandsBySession[session] ?? []).filter { $0.id > id }
    }

    public func execution(_ id: ExecutionID) -> Execution? { executionsById[id] }

    public func executions(of session: SessionID) -> [Execution] {
        executionsById.values.filter { $0.sessionId == session }.sorted { $0.id < $1.id }
    }

    public func latestExecution(of session: SessionID) -> Execution? { executions(of: session).last { $0.status != .queued } }

    private struct UsageKey: Hashable {
        var owner: Owner
        var day: String
        var agent: String
    }

    private var usageDays: [UsageKey: UsageDay] = [:]

    public func usage(of owner: Owner, from: String, to: String) -> [UsageDay] {
        usageDays.values.filter { $0.owner == owner && $0.day >= from && $0.day <= to }.sorted { ($0.day, $0.agent) < ($1.day, $1.agent) }
    }

    public func recordHeartbeats(_ heartbeats: [Heartbeat]) -> Int {
        var changed = 0
        for beat in heartbeats {
            guard var execution = executionsById[beat.executionId], execution.status == .running,
                (execution.lastHeartbeat.map { $0 < beat.at } ?? true)
            else { continue }
            execution.lastHeartbeat = beat.at
            executionsById[beat.executionId] = execution
            changed += 1
        }
        return changed
    }

    public func events(of session: SessionID, _ query: EventQuery) -> [Event] {
        let matching = (eventsBySession[session] ?? []).lazy.filter { event in
            event.id > query.afterId
                && (query.executionId == nil || event.executionId == query.executionId)
                && (query.types == nil || query.types!.contains(event.type))
        }
        return Array(matching.prefix(max(0, query.limit)))
    }

    public func lastEventId(of session: SessionID) -> Int64 { lastEventIds[session] ?? 0 }

    public func oldestEventAt(of session: SessionID) -> Date? { eventsBySession[session]?.map(\.at).min() }

    public func deleteEvents(of session: SessionID, olderThan date: Date) -> Int {
        let before = eventsBySession[session]?.count ?? 0
        eventsBySession[session]?.removeAll { $0.at < date }
        return before - (eventsBySession[session]?.count ?? 0)
    }

    public func wakeUps() -> [WakeUp] {
        wakeUpsBySession.map { WakeUp(sessionId: $0.key, dueAt: $0.value) }.sorted { $0.dueAt < $1.dueAt }
    }

    public func wakeUp(of session: SessionID) -> Date? { wakeUpsBySession[session] }

    public func claimWakeUps(dueBefore horizon: Date, now: Date, node: String, leaseMs: Int64, limit: Int) -> [WakeUp] {
        Array(wakeUps().prefix { $0.dueAt < horizon }.prefix(limit))
    }

    public func settingSavingIfAbsent(_ key: String, value: String) -> String {
        if let existing = settings[key] { return existing }
        settings[key] = value
        return value
    }

    @discardableResult
    public func enqueueCallback(_ delivery: CallbackDelivery) throws -> Bool {
        guard sessionsById[delivery.sessionId] != nil else { throw StoreError.sessionNotFound(delivery.sessionId) }
        guard !callbacksById.values.contains(where: { $0.executionId == delivery.executionId && $0.requestId == delivery.requestId }) else {
            return false
        }
        callbacksById[delivery.id] = delivery
        return true
    }

    public func dueCallbacks(before date: Date, limit: Int) -> [CallbackDelivery] {
        let due = callbacksById.values
            .filter { $0.nextAttemptAt <= date }
            .sorted { ($0.nextAttemptAt, $0.createdAt, $0.id.uuidString) < ($1.nextAttemptAt, $1.createdAt, $1.id.uuidString) }
        return Array(due.prefix(max(0, limit)))
    }

    public func nextCallbackDue() -> Date? { callbacksById.values.map(\.nextAttemptAt).min() }

    @discardableResult
    public func markCallbackDelivered(_ id: UUID) -> Bool { callbacksById.removeValue(forKey: id) != nil }

    public func rescheduleCallback(_ id: UUID, nextAttemptAt: Date, lastError: String) {
        callbacksById[id]?.attempts += 1
        callbacksById[id]?.nextAttemptAt = nextAttemptAt
        callbacksById[id]?.lastError = lastError
    }

    @discardableResult
    public func markCallbackFailed(_ id: UUID) -> Bool { callbacksById.removeValue(forKey: id) != nil }
}
