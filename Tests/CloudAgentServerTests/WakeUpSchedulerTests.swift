import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Logging
import Synchronization
import Testing

/// The scheduler on its own, with an in-memory store, evaluations the test controls and a
/// manual clock: the test moves time, so a wake-up's lag is measured exactly, in no real time.
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
        let clock: ManualClock

        init(clock: ManualClock) { self.clock = clock }

        func begin(_ id: SessionID) {
            state.withLock {
                $0.inFlight[id, default: 0] += 1
                $0.mostInFlight = max($0.mostInFlight, $0.inFlight[id] ?? 0)
            }
        }

        func end(_ id: SessionID) {
            state.withLock {
                $0.inFlight[id, default: 1] -= 1
                $0.evaluated[id, default: []].append(clock.now())
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

    static func scheduler(_ clock: ManualClock) -> WakeUpScheduler {
        WakeUpScheduler(store: InMemorySessionStore(), clock: clock, logger: Logger(label: "wake-up-scheduler-test"))
    }

    @Test("wake-ups fire independently: a session whose evaluation hangs delays no other's, and fires once it is let go")
    func oneSlowEvaluationHoldsNoOther() async throws {
        let clock = ManualClock()
        let scheduler = Self.scheduler(clock)
        let record = Record(clock: clock)
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
        await scheduler.arm(slow, at: clock.now())
        try await eventually(within: 30, "the slow evaluation to begin") { await scheduler.evaluatingCount == 1 }
        var dues: [SessionID: Date] = [:]
        let start = clock.now()
        for (index, id) in others.enumerated() {
            let due = start.adding(milliseconds: 200 + 100 * Int64(index))
            dues[id] = due
            await scheduler.arm(id, at: due)
        }
        // Time moves to each wake-up in turn; each fires there, the slow one still held.
        for id in others {
            clock.set(to: try #require(dues[id]))
            try await eventually(within: 30, "the session due now to be evaluated") { !record.evaluations(of: id).isEmpty }
        }
        for id in others {
            let lag = try #require(record.evaluations(of: id).first).timeIntervalSince(try #require(dues[id]))
            #expect(lag >= -0.01 && lag < 0.5, "evaluated \(lag) s after its wake-up")
        }
        #expect(record.evaluations(of: slow).isEmpty, "the slow one is still held")
        gate.open()
        try await eventually(within: 30, "the slow evaluation to end") { record.evaluations(of: slow).count == 1 }
    }

    @Test("a session due again while it is being evaluated is evaluated once more afterwards, never twice at once")
    func dueAgainDuringItsEvaluation() async throws {
        let clock = ManualClock()
        let scheduler = Self.scheduler(clock)
        let record = Record(clock: clock)
        let gate = Gate()
        let id = SessionID()
        let calls = Mutex(0)
        await scheduler.setEvaluator { evaluated in
            record.begin(evaluated)
            if calls.withLock({
                $0 += 1; return $0
            }) == 1 {
                await gate.wait()
            }
            record.end(evaluated)
            return nil
        }
        let running = Task { try await scheduler.run() }
        defer { running.cancel() }
        await scheduler.poke(id)
        try await eventually(within: 30, "the first evaluation to begin") { calls.withLock { $0 } == 1 }
        await scheduler.poke(id)
        await scheduler.poke(id)
        try await Task.sleep(for: .milliseconds(100))
        #expect(calls.withLock { $0 } == 1, "evaluated again while its first evaluation runs")
        gate.open()
        try await eventually(within: 30, "the second evaluation") { record.evaluations(of: id).count == 2 }
        #expect(record.mostInFlightForOneSession == 1)
    }

    @Test("the next wake-up an evaluation returns is armed; an earlier one armed meanwhile wins")
    func nextWakeUpIsArmed() async throws {
        let clock = ManualClock()
        let scheduler = Self.scheduler(clock)
        let record = Record(clock: clock)
        let id = SessionID()
        await scheduler.setEvaluator { evaluated in
            record.begin(evaluated)
            record.end(evaluated)
            // Again in 300 ms, twice.
            return record.evaluations(of: evaluated).count < 3 ? clock.now().adding(milliseconds: 300) : nil
        }
        let running = Task { try await scheduler.run() }
        defer { running.cancel() }
        await scheduler.poke(id)
        try await eventually(within: 30, "the first evaluation") { record.evaluations(of: id).count == 1 }
        // 299 ms later nothing is due; at 300 ms the next evaluation fires.
        clock.advance(milliseconds: 299)
        try await Task.sleep(for: .milliseconds(50))
        #expect(record.evaluations(of: id).count == 1, "evaluated before its next wake-up")
        clock.advance(milliseconds: 1)
        try await eventually(within: 30, "the second evaluation") { record.evaluations(of: id).count == 2 }
        clock.advance(milliseconds: 300)
        try await eventually(within: 30, "the third evaluation") { record.evaluations(of: id).count == 3 }
        let times = record.evaluations(of: id)
        try #require(times.count == 3)
        #expect(times[1].timeIntervalSince(times[0]) >= 0.28)
        #expect(times[2].timeIntervalSince(times[1]) >= 0.28)
        clock.advance(milliseconds: 400)
        try await Task.sleep(for: .milliseconds(50))
        #expect(record.evaluations(of: id).count == 3, "nothing armed after the last")
        #expect(await scheduler.armedCount == 0)
    }
}
