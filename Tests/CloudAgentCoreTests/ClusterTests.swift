import CloudAgentCore
import Foundation
import Testing

/// Several nodes on one database, as the core sees them: when runtimes could be heard, a
/// timer armed on several nodes firing once, and the nodes recorded on a runtime.
@Suite("Several nodes")
struct ClusterTests {
    static func node(_ id: String, from start: Int64, renewed: Int64) -> NodeInfo {
        NodeInfo(id: id, advertiseURL: "http://\(id):8787", startedAt: Fixture.at(start), heartbeatAt: Fixture.at(renewed))
    }

    @Test("availability: the start of the unbroken span some node covered, up to now")
    func availability() {
        let now = Fixture.at(seconds(100))
        let lease: Int64 = seconds(5)
        let fallback = Fixture.at(seconds(99))
        // b started while a was alive, then a died: covered since a's start.
        #expect(
            ClusterAvailability.since(
                [Self.node("a", from: 0, renewed: seconds(60)), Self.node("b", from: seconds(50), renewed: seconds(100))],
                now: now, leaseMs: lease, fallback: fallback) == Fixture.t0)
        // a died at 40 s (covered until 45 s); b started at 50 s: downtime between, so since 50 s.
        #expect(
            ClusterAvailability.since(
                [Self.node("a", from: 0, renewed: seconds(40)), Self.node("b", from: seconds(50), renewed: seconds(100))],
                now: now, leaseMs: lease, fallback: fallback) == Fixture.at(seconds(50)))
        // A chain of overlapping nodes reaches back to the first.
        #expect(
            ClusterAvailability.since(
                [
                    Self.node("c", from: seconds(70), renewed: seconds(99)), Self.node("a", from: seconds(10), renewed: seconds(32)),
                    Self.node("b", from: seconds(30), renewed: seconds(72)),
                ], now: now, leaseMs: lease, fallback: fallback) == Fixture.at(seconds(10)))
        // No node live now: the fallback.
        #expect(ClusterAvailability.since([Self.node("a", from: 0, renewed: seconds(10))], now: now, leaseMs: lease, fallback: fallback) == fallback)
    }

    @Test("a runtime whose node was lost is judged from that loss, when another node could first hear it")
    func heardSince() {
        var session = Fixture.session(runtime: Fixture.runningRuntime(since: Fixture.t0))
        let context = SessionContext(
            now: Fixture.at(seconds(100)), timing: Timing(), controlPlaneStartedAt: Fixture.at(seconds(10)), nodeId: "b",
            lostNodes: ["a": Fixture.at(seconds(80))]
        )
        #expect(context.heardSince(session) == Fixture.at(seconds(10)))
        session.runtime = Fixture.runningRuntime(since: Fixture.t0, connectedNode: "b")
        #expect(context.heardSince(session) == Fixture.at(seconds(10)))
        session.runtime = Fixture.runningRuntime(since: Fixture.t0, connectedNode: "a")
        #expect(context.heardSince(session) == Fixture.at(seconds(80)))
    }

    @Test("a stale heartbeat after its node was lost is not a failure until the stale threshold has passed since the loss")
    func lostNodeDowntimeNeverCounts() throws {
        var session = Fixture.session(
            runtime: Fixture.runningRuntime(since: Fixture.t0, process: RuntimeProcess(pid: 4242, startTime: 99), connectedNode: "a"))
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.t0, runningAt: Fixture.t0)
        execution.lastHeartbeat = Fixture.at(seconds(5))
        session.activeExecutionId = execution.id
        let timing = Timing(heartbeatIntervalMs: seconds(1), staleThresholdMs: seconds(10))
        let state = SessionState(session: session, execution: execution, wakeUp: Fixture.at(seconds(20)))
        // Node a was last heard of at 15 s: the runtime may reconnect to b until 25 s.
        let lost = ["a": Fixture.at(seconds(15))]
        let early = try SessionReducer.evaluate(
            state,
            context: SessionContext(
                now: Fixture.at(seconds(20)), timing: timing, controlPlaneStartedAt: Fixture.t0, nodeId: "b", lostNodes: lost
            ))
        #expect(early.change?.executions.first?.status != .failed)
        #expect(early.output.output == Fixture.at(seconds(25)))
        let late = try SessionReducer.evaluate(
            state,
            context: SessionContext(
                now: Fixture.at(seconds(26)), timing: timing, controlPlaneStartedAt: Fixture.t0, nodeId: "b", lostNodes: lost
            ))
        #expect(late.change?.executions.first?.status == .failed)
    }

    @Test("a timer fires once: a node finding the stored wake-up moved (another node fired it) decides nothing")
    func timerFiresOnce() throws {
        var session = Fixture.session(runtime: Fixture.runningRuntime(since: Fixture.t0, process: RuntimeProcess(pid: 4242, startTime: 99)))
        session.initiatedAt = Fixture.t0
        let timing = Timing(idleTimeoutMs: minutes(15))
        let context = SessionContext(now: Fixture.at(minutes(15)), timing: timing, controlPlaneStartedAt: Fixture.t0)
        let due = SessionState(session: session, execution: nil, wakeUp: Fixture.at(minutes(15)))
        let fired = try SessionReducer.evaluate(due, context: context, timer: true)
        #expect(fired.change?.session?.runtime.state == .stopping)
        let moved = SessionState(session: session, execution: nil, wakeUp: Fixture.at(minutes(20)))
        let skipped = try SessionReducer.evaluate(moved, context: context, timer: true)
        #expect(skipped.change == nil)
        #expect(skipped.effects.isEmpty)
        #expect(skipped.output.output == Fixture.at(minutes(20)))
        // A poke (after a change) evaluates anyway.
        #expect(try SessionReducer.evaluate(moved, context: context).change?.session?.runtime.state == .stopping)
    }

    @Test("a launch records its host node, a hello the node it connected to")
    func nodesRecorded() throws {
        var session = Fixture.session(runtime: .starting(RuntimeStatus.Starting(requestedAt: Fixture.t0, cold: false)))
        session.initiatedAt = nil
        let launching = SessionReducer.launching(
            SessionState(session: session, execution: nil), requestedAt: Fixture.t0, instanceId: "i-1", secretHash: "h", hostNode: "a"
        )
        let launched = try #require(launching.change?.session)
        #expect(launched.runtime.hostNode == "a")
        let hello = SessionReducer.hello(
            SessionState(session: launched, execution: nil), instanceId: "i-1", reportedActive: nil,
            context: SessionContext(now: Fixture.at(seconds(1)), timing: Timing(), controlPlaneStartedAt: Fixture.t0, nodeId: "b")
        )
        #expect(hello.change?.session?.runtime.connectedNode == "b")
        #expect(hello.change?.session?.runtime.hostNode == "a")
    }

    @Test("a change notice is small JSON that says what changed, and survives the trip")
    func changeNotice() throws {
        let session = Fixture.session(runtime: Fixture.runningRuntime(since: Fixture.t0, hostNode: "a"))
        let event = Event(id: 7, sessionId: session.id, executionId: nil, type: "agent", at: Fixture.t0, data: [:])
        let last = Event(id: 9, sessionId: session.id, executionId: nil, type: "agent", at: Fixture.t0, data: [:])
        let notice = ChangeNotice(node: "b", change: SessionChange(sessionId: session.id, session: session), events: [event, last], record: session)
        #expect(notice.firstEventId == 7 && notice.lastEventId == 9 && notice.host == "a" && notice.runtime == "running")
        #expect(ChangeNotice(payload: notice.payload) == notice)
        #expect(notice.payload.utf8.count < 300)
        let deleted = ChangeNotice(node: "b", change: .delete(session.id), events: [], record: nil, previous: session)
        #expect(deleted.runtime == "deleted" && deleted.host == "a")
        #expect(ChangeNotice(payload: "not json") == nil)
    }

    @Test("a restarting change is in progress while its node lives; one left by a node lost or restarted since is over")
    func changeInProgressAcrossNodes() throws {
        let session = Fixture.session()
        let state = SessionState(session: session, execution: nil)
        func context(at offset: Int64, lost: [String: Date] = [:], starts: [String: Date]) -> SessionContext {
            SessionContext(now: Fixture.at(offset), timing: Timing(), controlPlaneStartedAt: Fixture.t0, nodeId: "a", lostNodes: lost, nodeStarts: starts)
        }
        let begun = try SessionReducer.beginChange(state, id: Fixture.sessionId, owner: .local, context: context(at: seconds(1), starts: ["a": Fixture.t0]))
        let changing = SessionState(session: try #require(begun.change?.session), execution: nil)
        #expect(changing.session.changingNode == "a")
        // Node a still carries it out: a second change is refused.
        #expect(throws: SessionError.self) {
            try SessionReducer.beginChange(changing, id: Fixture.sessionId, owner: .local, context: context(at: seconds(2), starts: ["a": Fixture.t0]))
        }
        // Node a was lost, or restarted after the mark: nothing carries it out any more.
        #expect(throws: Never.self) {
            try SessionReducer.beginChange(
                changing, id: Fixture.sessionId, owner: .local, context: context(at: seconds(9), lost: ["a": Fixture.at(seconds(3))], starts: ["a": Fixture.t0])
            )
        }
        #expect(throws: Never.self) {
            try SessionReducer.beginChange(
                changing, id: Fixture.sessionId, owner: .local, context: context(at: seconds(9), starts: ["a": Fixture.at(seconds(5))]))
        }
    }
}
