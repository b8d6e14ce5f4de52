import CloudAgentCore
import Foundation
import Testing

/// The message queue as pure decisions: a follow-up sent with `queue` while an execution is
/// active waits, and starts in the transaction that ends the active one, whatever its outcome.
@Suite("Message queue")
struct MessageQueueTests {
    static let timing = Timing(idleTimeoutMs: seconds(10), staleThresholdMs: seconds(30), pendingTimeoutMs: seconds(120), stuckAfterMs: seconds(60))

    static func context(at offset: Int64) -> SessionContext {
        SessionContext(now: Fixture.at(offset), timing: timing, controlPlaneStartedAt: Fixture.t0)
    }

    static let first = ExecutionID(at: Fixture.at(seconds(1)))

    static func after<Output>(_ decision: Decision<Output>, _ state: SessionState) -> SessionState {
        guard let change = decision.change else { return state }
        return state.applying(change) ?? state
    }

    /// `decision` with the rules after it, as the engine runs every change.
    static func performed<Output>(_ state: SessionState, at offset: Int64, _ decide: (SessionState) throws -> Decision<SessionReducer.Outcome<Output>>) throws
        -> (SessionState, Decision<SessionReducer.Outcome<SessionReducer.Ruled<Output>>>)
    {
        let decision = try SessionReducer.ruled(state, try decide(state), rules: .afterChange, context: context(at: offset))
        return (after(decision, state), decision)
    }

    /// A session whose runtime is up, running its first execution since 1 s.
    static func running() throws -> SessionState {
        let session = Fixture.session(
            runtime: Fixture.runningRuntime(since: Fixture.t0, instanceId: "instance-1", process: RuntimeProcess(pid: 4242, startTime: 99)))
        var state = SessionState(session: session, execution: nil)
        state = try performed(state, at: seconds(1)) {
            try SessionReducer.startExecution($0, id: Fixture.sessionId, owner: .local, .init(id: first, followUp: false), context: context(at: seconds(1)))
        }.0
        return try performed(state, at: seconds(1)) {
            try SessionReducer.ingest(
                $0, instanceId: "instance-1", events: [ReportedEvent(seq: 1, executionId: first.rawValue, kind: .running, at: Fixture.at(seconds(1)))],
                context: context(at: seconds(1)))
        }.0
    }

    static func send(_ state: SessionState, _ prompt: String, queue: Bool = true, at offset: Int64) throws -> (SessionState, Execution) {
        let (next, decision) = try performed(state, at: offset) {
            try SessionReducer.startExecution(
                $0, id: Fixture.sessionId, owner: .local, .init(id: ExecutionID(at: Fixture.at(offset)), prompt: prompt, followUp: true, queue: queue),
                context: context(at: offset))
        }
        return (next, decision.output.output.output)
    }

    static func ended(_ state: SessionState, _ id: ExecutionID, seq: Int64, status: String, at offset: Int64) throws -> (
        SessionState, Decision<SessionReducer.Outcome<SessionReducer.Ruled<SessionReducer.Ingested>>>
    ) {
        try performed(state, at: offset) {
            try SessionReducer.ingest(
                $0, instanceId: "instance-1",
                events: [
                    ReportedEvent(seq: seq, executionId: id.rawValue, kind: .ended, at: Fixture.at(offset), data: ["status": .string(status), "exitCode": 1])
                ],
                context: context(at: offset))
        }
    }

    @Test("a queued follow-up waits as queued (no command, no deadline moved), and starts in the transaction that ends the active one")
    func queuedThenStarted() throws {
        var state = try Self.running()
        let (queuedState, queued) = try Self.send(state, "second", at: seconds(2))
        state = queuedState
        #expect(queued.status == .queued)
        #expect(queued.queuedAt == Fixture.at(seconds(2)))
        #expect(state.session.queue == [queued.id])
        #expect(state.session.activeExecutionId == Self.first)
        #expect(state.nextQueued?.id == queued.id)
        let (_, third) = try Self.send(state, "third", at: seconds(3))
        #expect(third.status == .queued)
        state = try Self.send(state, "third", at: seconds(3)).0

        for outcome in ["completed", "failed", "interrupted"] {
            let (next, decision) = try Self.ended(state, Self.first, seq: 2, status: outcome, at: seconds(4))
            let change = try #require(decision.change)
            #expect(change.events.map(\.type).suffix(1) == [EventType.executionStarted])
            #expect(change.events.last?.data["queued"] == true)
            #expect(change.commands.contains(.execute(queued.id)))
            #expect(decision.effects.contains(.deliverCommands))
            #expect(next.session.activeExecutionId == queued.id)
            #expect(next.session.queue.count == 1)
            #expect(next.execution?.status == .pending)
            // Its turn came now: the pending timeout counts from here, not from when it was queued.
            #expect(next.execution?.startedAt == Fixture.at(seconds(4)))
            #expect(change.executions.map(\.id).contains(Self.first))
        }
    }

    @Test("the active execution failed by a rule (no heartbeat) hands over to the queue in the same evaluation")
    func staleHandsOver() throws {
        let (state, queued) = try Self.send(try Self.running(), "next", at: seconds(2))
        let decision = try SessionReducer.evaluate(state, context: Self.context(at: seconds(40)))
        let change = try #require(decision.change)
        #expect(change.events.map(\.type) == [EventType.executionFailed, EventType.executionStarted])
        #expect(change.session?.activeExecutionId == queued.id)
        #expect(Set(change.executions.map(\.id)) == [Self.first, queued.id])
        #expect(change.executions.first { $0.id == Self.first }?.status == .failed)
    }

    @Test("a runtime that crashed is started again (cold) for the queue's next execution")
    func crashedRuntimeStartsAgain() throws {
        let (state, queued) = try Self.send(try Self.running(), "next", at: seconds(2))
        let (next, decision) = try Self.performed(state, at: seconds(5)) {
            try SessionReducer.exited($0, process: RuntimeProcess(pid: 4242, startTime: 99), detail: "killed", context: Self.context(at: seconds(5)))
        }
        #expect(next.session.runtime.state == .starting)
        #expect(next.session.activeExecutionId == queued.id)
        #expect(decision.effects.contains(.launch(requestedAt: Fixture.at(seconds(5)), restore: true)))
    }

    @Test("without queue a follow-up is still a conflict; with queue and nothing active it starts at once")
    func queueOnlyWhenBusy() throws {
        let state = try Self.running()
        #expect(throws: SessionError.executionInProgress(Self.first)) { try Self.send(state, "x", queue: false, at: seconds(2)) }
        let (idle, _) = try Self.ended(state, Self.first, seq: 2, status: "completed", at: seconds(3))
        let (_, started) = try Self.send(idle, "now", at: seconds(4))
        #expect(started.status == .pending)
    }

    @Test("at most 20 wait (then QUEUE_FULL, retryable); a queued one can be cancelled, a started one cannot")
    func fullAndCancel() throws {
        var state = try Self.running()
        var ids: [ExecutionID] = []
        for index in 0..<SessionRecord.maxQueued {
            let (next, execution) = try Self.send(state, "m\(index)", at: seconds(2) + Int64(index))
            state = next
            ids.append(execution.id)
        }
        #expect(state.session.queue == ids)
        #expect(state.session.executionCount == 21)
        do {
            _ = try Self.send(state, "one too many", at: seconds(3))
            Issue.record("a 21st queued message was accepted")
        } catch SessionError.limitReached(let kind, let limit, _) {
            #expect(kind == .queue && kind.code == "QUEUE_FULL" && limit == 20)
        }
        // Cancel the second: its row goes, the others keep their order.
        let (cancelled, decision) = try Self.performed(state, at: seconds(4)) {
            try SessionReducer.cancelQueued($0, id: Fixture.sessionId, owner: .local, executionId: ids[1], known: true, context: Self.context(at: seconds(4)))
        }
        #expect(decision.change?.cancelledQueued == [ids[1]])
        #expect(decision.change?.events.map(\.type) == [EventType.executionCancelled])
        #expect(cancelled.session.queue == [ids[0]] + ids[2...])
        #expect(cancelled.session.executionCount == 20)
        #expect(throws: SessionError.invalidState("execution \(Self.first) is not queued: only a queued execution can be cancelled")) {
            try SessionReducer.cancelQueued(
                cancelled, id: Fixture.sessionId, owner: .local, executionId: Self.first, known: true, context: Self.context(at: seconds(5)))
        }
        let unknown = ExecutionID(at: Fixture.at(1))
        #expect(throws: SessionError.executionNotFound(unknown)) {
            try SessionReducer.cancelQueued(
                cancelled, id: Fixture.sessionId, owner: .local, executionId: unknown, known: false, context: Self.context(at: seconds(5)))
        }
        // Another user's session is not found.
        #expect(throws: SessionError.notFound(Fixture.sessionId)) {
            try SessionReducer.cancelQueued(
                cancelled, id: Fixture.sessionId, owner: Owner(user: "eve"), executionId: ids[0], known: true, context: Self.context(at: seconds(5)))
        }
    }

    @Test("a queued execution is not activity: the session's deadlines are those it would have without it")
    func notActivity() throws {
        let base = try Self.running()
        let (queued, _) = try Self.send(base, "next", at: seconds(2))
        // While the first runs, the next wake-up is the running execution's, queue or not.
        for offset in [seconds(3), seconds(20)] {
            let with = try SessionReducer.evaluate(queued, context: Self.context(at: offset)).output.output
            let without = try SessionReducer.evaluate(base, context: Self.context(at: offset)).output.output
            #expect(with == without)
        }
        // Once the queue has run, the idle deadline counts from the last execution's end.
        let (second, _) = try Self.ended(queued, Self.first, seq: 2, status: "completed", at: seconds(4))
        let nextId = try #require(second.session.activeExecutionId)
        let (running, _) = try Self.performed(second, at: seconds(5)) {
            try SessionReducer.ingest(
                $0, instanceId: "instance-1", events: [ReportedEvent(seq: 3, executionId: nextId.rawValue, kind: .running, at: Fixture.at(seconds(5)))],
                context: Self.context(at: seconds(5)))
        }
        let (idle, _) = try Self.ended(running, nextId, seq: 4, status: "completed", at: seconds(6))
        #expect(idle.session.activeExecutionId == nil && idle.session.queue.isEmpty)
        let wake = try SessionReducer.evaluate(idle, context: Self.context(at: seconds(7))).output.output
        #expect(wake == Fixture.at(seconds(6) + Self.timing.idleTimeoutMs))
    }
}

/// Usage as the control plane records it: a runtime's cumulative report per execution.
@Suite("Usage reports")
struct UsageReportTests {
    @Test("a report parses counts and a cost; nothing counted is no report; a later report adds only what grew")
    func parsing() {
        #expect(Usage(reported: ["inputTokens": 10, "outputTokens": 2, "costUsd": .number(0.5)]) == Usage(inputTokens: 10, outputTokens: 2, costUsd: 0.5))
        #expect(Usage(reported: ["somethingElse": 1]) == nil)
        #expect(Usage(reported: ["inputTokens": -5, "outputTokens": 3])?.inputTokens == 0)
        let first = Usage(inputTokens: 10, outputTokens: 2, costUsd: 0.5)
        let later = Usage(inputTokens: 15, outputTokens: 2, cacheReadTokens: 4, costUsd: 0.75)
        #expect(later.since(first) == Usage(inputTokens: 5, cacheReadTokens: 4, costUsd: 0.25))
        #expect(first.since(later).totalTokens == 0)
        #expect((first + Usage(inputTokens: 1)).costUsd == 0.5)
        #expect((Usage(inputTokens: 1) + Usage(outputTokens: 1)).costUsd == nil)
        #expect(UsageDay.day(of: Fixture.t0) == "2026-01-02")
    }

    @Test("an execution's reports: kept on it, the growth summed on the session and per owner, day and agent (the first counts the execution)")
    func ingested() throws {
        let base = try MessageQueueTests.running()
        let id = MessageQueueTests.first
        func report(_ state: SessionState, seq: Int64, _ data: [String: JSONValue], at offset: Int64) throws -> (SessionState, SessionChange?) {
            let (next, decision) = try MessageQueueTests.performed(state, at: offset) {
                try SessionReducer.ingest(
                    $0, instanceId: "instance-1", events: [ReportedEvent(seq: seq, executionId: id.rawValue, kind: .usage, at: Fixture.at(offset), data: data)],
                    context: MessageQueueTests.context(at: offset))
            }
            return (next, decision.change)
        }
        let (once, firstChange) = try report(base, seq: 2, ["inputTokens": 100, "outputTokens": 10, "costUsd": .number(0.5)], at: seconds(2))
        #expect(once.execution?.usage == Usage(inputTokens: 100, outputTokens: 10, costUsd: 0.5))
        #expect(once.session.usageTotal == Usage(inputTokens: 100, outputTokens: 10, costUsd: 0.5))
        #expect(
            firstChange?.usage == [
                UsageDay(owner: .local, day: "2026-01-02", agent: "scripted", usage: Usage(inputTokens: 100, outputTokens: 10, costUsd: 0.5), executions: 1)
            ])
        // No event of the log: usage lives on the execution.
        #expect(firstChange?.events.isEmpty == true)
        let (twice, secondChange) = try report(once, seq: 3, ["inputTokens": 150, "outputTokens": 10, "costUsd": .number(0.75)], at: seconds(3))
        #expect(twice.execution?.usage == Usage(inputTokens: 150, outputTokens: 10, costUsd: 0.75))
        #expect(twice.session.usageTotal == Usage(inputTokens: 150, outputTokens: 10, costUsd: 0.75))
        #expect(secondChange?.usage.first?.usage == Usage(inputTokens: 50, costUsd: 0.25))
        #expect(secondChange?.usage.first?.executions == 0)
    }
}

/// The event caps as pure decisions: output past a cap is dropped and counted, one
/// `events.truncated` per execution says how many and why, lifecycle events always pass.
@Suite("Event caps")
struct EventCapTests {
    static func context(at offset: Int64, caps: EventCaps) -> SessionContext {
        SessionContext(now: Fixture.at(offset), timing: MessageQueueTests.timing, controlPlaneStartedAt: Fixture.t0, eventCaps: caps)
    }

    static func output(_ seq: Int64, _ text: String, at offset: Int64) -> ReportedEvent {
        ReportedEvent(
            seq: seq, executionId: MessageQueueTests.first.rawValue, kind: .agent, at: Fixture.at(offset), data: ["kind": "text", "text": .string(text)])
    }

    static func ingest(_ state: SessionState, _ events: [ReportedEvent], at offset: Int64, caps: EventCaps) throws -> (SessionState, SessionChange?) {
        let context = context(at: offset, caps: caps)
        let decision = try SessionReducer.ruled(
            state, try SessionReducer.ingest(state, instanceId: "instance-1", events: events, context: context), rules: .afterChange, context: context)
        return (MessageQueueTests.after(decision, state), decision.change)
    }

    @Test("past the per-execution cap, output is dropped and counted; the end writes one events.truncated {dropped, reason: events}; the agent is not stopped")
    func perExecution() throws {
        let caps = EventCaps(maxEventsPerExecution: 3, maxEventBytesPerSession: 1 << 20)
        let (state, change) = try Self.ingest(
            try MessageQueueTests.running(), (2...7).map { Self.output($0, "line \($0)", at: seconds(2)) }, at: seconds(2), caps: caps)
        #expect(change?.events.map { $0.data["text"]?.stringValue } == ["line 2", "line 3", "line 4"])
        #expect(state.execution?.progressEvents == 3)
        #expect(state.session.eventsDropped == 3)
        #expect(state.session.truncation == Truncation(executionId: MessageQueueTests.first, dropped: 3, reason: .events))
        // The dropped output is still progress: the stuck clock counts from it.
        #expect(state.execution?.lastEventAt == Fixture.at(seconds(2)))
        // The stored bytes are the kept events' JSON, as the store writes it.
        #expect(state.session.eventBytes == Int64(change?.events.reduce(0) { $0 + ($1.encodedData?.utf8.count ?? 0) } ?? 0))
        #expect(change?.events.allSatisfy { $0.encodedData == JSONText.encode($0.data) } == true)

        let end = ReportedEvent(seq: 8, executionId: MessageQueueTests.first.rawValue, kind: .ended, at: Fixture.at(seconds(3)), data: ["status": "completed"])
        let (ended, endChange) = try Self.ingest(state, [end], at: seconds(3), caps: caps)
        #expect(endChange?.events.map(\.type) == [EventType.eventsTruncated, EventType.executionCompleted])
        #expect(endChange?.events.first?.data == ["dropped": 3, "reason": "events"])
        #expect(ended.session.truncation == nil)
        #expect(ended.execution?.status == .completed)
    }

    @Test("past the per-session byte cap, every later execution's output is dropped (reason bytes); lifecycle events are still written")
    func perSessionBytes() throws {
        let caps = EventCaps(maxEventsPerExecution: 1000, maxEventBytesPerSession: 120)
        let long = String(repeating: "x", count: 60)
        let (state, change) = try Self.ingest(
            try MessageQueueTests.running(), (2...4).map { Self.output($0, long, at: seconds(2)) }, at: seconds(2), caps: caps)
        #expect(change?.events.count == 1)
        #expect(state.session.truncation?.reason == .bytes)
        #expect(state.session.truncation?.dropped == 2)
        // A failure decided here (no heartbeat) writes the truncation before the failure.
        let decision = try SessionReducer.evaluate(state, context: Self.context(at: seconds(40), caps: caps))
        #expect(decision.change?.events.map(\.type) == [EventType.eventsTruncated, EventType.executionFailed])
    }
}

/// The per-user quota's decision: a start of a runtime that is not up is refused (429) when
/// the owner's other live runtimes, counted in the transaction, are at the limit.
@Suite("Per-user quota")
struct QuotaDecisionTests {
    @Test("a cold start at the owner's limit is QUOTA_EXCEEDED and writes nothing; below it, or with the runtime up, it starts")
    func coldStart() throws {
        var state = try MessageQueueTests.running()
        let (ended, _) = try MessageQueueTests.ended(state, MessageQueueTests.first, seq: 2, status: "completed", at: seconds(2))
        state = ended
        try state.session.runtime.beginStopping(StopReason(rule: .idle, at: Fixture.at(seconds(20))))
        try state.session.runtime.markStopped(at: Fixture.at(seconds(21)))
        func send(_ count: Int?, limit: Int?) throws -> Decision<SessionReducer.Outcome<Execution>> {
            var context = MessageQueueTests.context(at: seconds(30))
            context.maxRuntimesPerUser = limit
            var at = state
            at.ownerRuntimes = count
            return try SessionReducer.startExecution(
                at, id: Fixture.sessionId, owner: .local, .init(id: ExecutionID(at: Fixture.at(seconds(30))), prompt: "again", followUp: true),
                context: context)
        }
        #expect(throws: SessionError.self) { try send(2, limit: 2) }
        do {
            _ = try send(3, limit: 2)
        } catch SessionError.limitReached(let kind, let limit, _) {
            #expect(kind.code == "QUOTA_EXCEEDED" && limit == 2)
        }
        #expect(try send(1, limit: 2).effects.contains { if case .launch = $0 { true } else { false } })
        #expect(try send(5, limit: nil).change?.session?.runtime.state == .starting)
        // A runtime that is up is not a start: no quota to check.
        var up = try MessageQueueTests.running()
        up.session.activeExecutionId = nil
        up.ownerRuntimes = 9
        var context = MessageQueueTests.context(at: seconds(30))
        context.maxRuntimesPerUser = 1
        #expect(throws: Never.self) {
            try SessionReducer.startExecution(
                up, id: Fixture.sessionId, owner: .local, .init(id: ExecutionID(at: Fixture.at(seconds(31))), followUp: true), context: context)
        }
    }
}
