import CloudAgentCore
import CloudAgentServer
import Foundation
import Logging
import Synchronization
import Testing

/// The scheduler on its own, with an in-memory store and evaluations the test controls.
@Suite("Wake-up scheduler")
struct WakeUpSchedulerTests {
    /// What the evaluations did: when each session was evaluated, and the most evaluations of
    /// one session in flight at once.
    final class Record: Sendable {
        private struct State {
            var evaluated: [SessionID: [Date]] = [:]
            var inFlight: [SessionID: Int] = [:]
            var mostInFlight = 0
        }
        private let state = Mutex(State())

        func begin(_ id: SessionID) {
            state.withLock {
                $0.inFlight[id, default: 0] += 1
                $0.mostInFlight = max($0.mostInFlight, $0.inFlight[id] ?? 0)
            }
        }

        func end(_ id: SessionID) {
            state.withLock {
                $0.inFlight[id, default: 1] -= 1
                $0.evaluated[id, default: []].append(Date())
            }
        }

        func evaluations(of id: SessionID) -> [Date] { state.withLock { $0.evaluated[id] ?? [] } }
        var mostInFlightForOneSession: Int { state.withLock { $0.mostInFlight } }
    }

    /// A gate an evaluation waits at until the test opens it.
    final class Gate: Sendable {
        private let opened = Mutex(false)
        func open() { opened.withLock { $0 = true } }
        func wait() async {
            while !opened.withLock({ $0 }) { try? await Task.sleep(for: .milliseconds(5)) }
        }
    }

    static func scheduler() -> WakeUpScheduler {
        WakeUpScheduler(store: InMemorySessionStore(), clock: SystemWallClock(), logger: Logger(label: "wake-up-scheduler-test"))
    }

    @Test("wake-ups fire independently: a session whose evaluation hangs delays no other's, and fires once it is let go")
    func oneSlowEvaluationHoldsNoOther() async throws {
        let scheduler = Self.scheduler()
        let record = Record()
        let gate = Gate()
        let slow = SessionID(), others = (0..<5).map { _ in SessionID() }
        await scheduler.setEvaluator { id in
            record.begin(id)
            if id == slow { await gate.wait() }
            record.end(id)
            return nil
        }
        let running = Task { try await scheduler.run() }
        defer { running.cancel() }
        await scheduler.arm(slow, at: Date())
        try await eventually(within: 5, "the slow evaluation to begin") { await scheduler.evaluatingCount == 1 }
        var dues: [SessionID: Date] = [:]
        for (index, id) in others.enumerated() {
            let due = Date().addingTimeInterval(0.2 + 0.1 * Double(index))
            dues[id] = due
            await scheduler.arm(id, at: due)
        }
        try await eventually(within: 5, "every other session to be evaluated") { others.allSatisfy { !record.evaluations(of: $0).isEmpty } }
        for id in others {
            let lag = try #require(record.evaluations(of: id).first).timeIntervalSince(try #require(dues[id]))
            #expect(lag >= -0.01 && lag < 0.5, "evaluated \(lag) s after its wake-up")
        }
        #expect(record.evaluations(of: slow).isEmpty, "the slow one is still held")
        gate.open()
        try await eventually(within: 5, "the slow evaluation to end") { record.evaluations(of: slow).count == 1 }
    }

    @Test("a session due again while it is being evaluated is evaluated once more afterwards, never twice at once")
    func dueAgainDuringItsEvaluation() async throws {
        let scheduler = Self.scheduler()
        let record = Record()
        let gate = Gate()
        let id = SessionID()
        let calls = Mutex(0)
        await scheduler.setEvaluator { evaluated in
            record.begin(evaluated)
            if calls.withLock({ $0 += 1; return $0 }) == 1 { await gate.wait() }
            record.end(evaluated)
            return nil
        }
        let running = Task { try await scheduler.run() }
        defer { running.cancel() }
        await scheduler.poke(id)
        try await eventually(within: 5, "the first evaluation to begin") { await scheduler.evaluatingCount == 1 }
        await scheduler.poke(id)
        await scheduler.poke(id)
        try await Task.sleep(for: .milliseconds(100))
        #expect(calls.withLock { $0 } == 1, "evaluated again while its first evaluation runs")
        gate.open()
        try await eventually(within: 5, "the second evaluation") { record.evaluations(of: id).count == 2 }
        #expect(record.mostInFlightForOneSession == 1)
    }

    @Test("the next wake-up an evaluation returns is armed; an earlier one armed meanwhile wins")
    func nextWakeUpIsArmed() async throws {
        let scheduler = Self.scheduler()
        let record = Record()
        let id = SessionID()
        await scheduler.setEvaluator { evaluated in
            record.begin(evaluated)
            record.end(evaluated)
            // Again in 300 ms, twice.
            return record.evaluations(of: evaluated).count < 3 ? Date().addingTimeInterval(0.3) : nil
        }
        let running = Task { try await scheduler.run() }
        defer { running.cancel() }
        await scheduler.poke(id)
        try await eventually(within: 15, "three evaluations") { record.evaluations(of: id).count == 3 }
        let times = record.evaluations(of: id)
        try #require(times.count == 3)
        #expect(times[1].timeIntervalSince(times[0]) >= 0.28)
        #expect(times[2].timeIntervalSince(times[1]) >= 0.28)
        try await Task.sleep(for: .milliseconds(400))
        #expect(record.evaluations(of: id).count == 3, "nothing armed after the last")
        #expect(await scheduler.armedCount == 0)
    }
}
