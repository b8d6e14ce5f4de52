import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSandbox
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing
#if canImport(Glibc)
    import Glibc
#endif

extension ReliabilityHarness {
    /// Part 2 of the reliability harness: runtimes die (SIGKILL) or freeze (SIGSTOP past the stale
    /// threshold, then SIGCONT) in the middle of executions. The control plane must fail exactly the
    /// work that was lost, refuse what a frozen runtime reports late, and carry on.
    @Suite("Reliability: chaos on runtimes", .processes)
    struct ReliabilityRuntimeChaosTests {
        static let part = "runtime-chaos"
        static let timing = Timing(
            idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 2000, pendingTimeoutMs: 10_000, stopGraceMs: 1500,
            stuckAfterMs: 60_000
        )

        @Test(
            "SIGKILL of random runtimes mid-execution: the execution fails, the runtime is crashed, the next message cold-starts and completes; the others are untouched"
        )
        func sigkillRandomRuntimes() async throws {
            var random = SeededRandom(seed: Reliability.seed("\(Self.part)/sigkill"))
            let count = 6
            let ticks = 60
            let victims = Set((0..<count).shuffled(using: &random).prefix(3))
            let delays = (0..<count).map { _ in Int.random(in: 0...700, using: &random) }
            let server = try TestServer(timing: Self.timing)
            defer { Reliability.killProcesses(under: server.directory.url) }
            try await server.run { api in
                // The victims tick for 20 s, long enough to be killed mid-execution on a busy machine.
                var ids: [SessionID] = []
                for index in 0..<count {
                    let id = try await api.createSession(["prompt": .string("tick \(victims.contains(index) ? 400 : ticks) 0.05")])
                    #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                    ids.append(id)
                }
                for id in ids {
                    try await eventually(within: 20, "the agent of \(id) to tick") { try await api.events(id).count { $0.type == "agent" } >= 3 }
                }
                // Kill the chosen runtimes (the runtime process only: its agent loses its reader).
                for index in victims.sorted() {
                    try await Task.sleep(for: .milliseconds(delays[index]))
                    let process = try await api.runtimeItself(ids[index])
                    let latest = try await api.request(.get, "/v1/sessions/\(ids[index])")["latestExecution"]
                    try #require(latest?["status"] == "running", "victim \(ids[index]) is not running: \(latest ?? .null)")
                    #expect(kill(process.pid, SIGKILL) == 0)
                }
                var eventsChecked = 0
                for (index, id) in ids.enumerated() {
                    let events: [TestAPI.EventView]
                    if victims.contains(index) {
                        let failed = try await api.waitForExecution(id, status: "failed", within: 5)
                        let error = failed["error"]?.stringValue ?? ""
                        #expect(error.contains("runtime died") || error.contains("heartbeat"), "error: \(error)")
                        let stopped = try await api.waitForRuntime(id, state: "stopped")
                        #expect(stopped["runtime"]?["stopReason"]?["rule"] == "crashed")
                        let failedId = try #require(failed["executionId"]?.stringValue)
                        // The next message cold-starts a new runtime and completes.
                        let follow = try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "tick 5 0.02\nsay recovered"])
                        #expect(follow.status == 202, "\(follow.text)")
                        let completed = try await api.waitForExecution(id, status: "completed", within: 20)
                        events = try await api.events(id)
                        #expect(events.filter { $0.type == "runtime.started" }.map { $0.data["cold"] } == [false, true])
                        let failure = try #require(events.first { $0.type == "execution.failed" })
                        #expect(failure.executionId == failedId)
                        #expect(!events.contains { $0.executionId == failedId && $0.id > failure.id }, "events of the dead execution after its failure")
                        let recovered = events.filter { $0.executionId == completed["executionId"]?.stringValue && $0.type == "agent" }
                        #expect(recovered.compactMap { $0.data["text"]?.stringValue } == (1...5).map { "tick \($0)/5" } + ["recovered"])
                    } else {
                        try await api.waitForExecution(id, status: "completed", within: 30)
                        events = try await api.events(id)
                        let texts = events.filter { $0.type == "agent" }.compactMap { $0.data["text"]?.stringValue }
                        #expect(texts == (1...ticks).map { "tick \($0)/\(ticks)" }, "an untouched session lost or repeated events")
                        #expect(try await api.request(.get, "/v1/sessions/\(id)")["runtime"]?["state"] == "running")
                    }
                    #expect(events.map(\.id) == Array(1...Int64(events.count)), "ids with gaps in \(id)")
                    eventsChecked += events.count
                }
                Reliability.report(
                    Self.part,
                    "SIGKILL: \(victims.count) of \(count) runtimes killed mid-execution; \(victims.count) executions failed, \(victims.count) crashed runtimes cold-started and completed a follow-up; \(count - victims.count) untouched executions completed; events checked \(eventsChecked)"
                )
            }
        }

        @Test(
            "SIGSTOP of a runtime past the stale threshold, then SIGCONT: the execution fails for lack of heartbeats, the late events and completion are refused, the session stays consistent, the runtime is usable"
        )
        func sigstopPastTheStaleThreshold() async throws {
            let server = try TestServer(timing: Self.timing)
            defer { Reliability.killProcesses(under: server.directory.url) }
            try await server.run { api in
                let id = try await api.createSession(["prompt": "tick 100 0.05\nsay finished"])
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                try await eventually(within: 20, "the agent to tick") { try await api.events(id).count { $0.type == "agent" } >= 5 }
                let process = try await api.runtimeItself(id)
                let agent = try await api.agentProcesses(id)
                try #require(!agent.isEmpty, "the agent's processes were not found below the runtime")

                #expect(kill(process.pid, SIGSTOP) == 0)
                let failed: JSONValue
                let atFailure: [TestAPI.EventView]
                let ackedAtFailure: Int64
                do {
                    defer { kill(process.pid, SIGCONT) }
                    failed = try await api.waitForExecution(id, status: "failed", within: 10)
                    // Frozen a while longer: its agent keeps ticking into the pipe meanwhile.
                    try await Task.sleep(for: .milliseconds(800))
                    // What was recorded while it was frozen, read before the thaw (a thawed
                    // runtime on a busy machine can report everything before a later read).
                    atFailure = try await api.events(id)
                    ackedAtFailure = try await api.plane.store.session(id)?.runtime.ackedSeq ?? 0
                }
                let executionId = try #require(failed["executionId"]?.stringValue)
                #expect(failed["error"]?.stringValue?.contains("heartbeat") == true, "\(failed)")
                let failure = try #require(atFailure.first { $0.type == "execution.failed" })

                // Thawed, the runtime sends what it held back, obeys the kill and reports its end:
                // all refused. Wait for the agent to be gone and the runtime's reports to settle.
                try await eventually(within: 10, "the old agent to be killed") { !ProcessControl.anyAlive(agent) }
                var acked = ackedAtFailure
                var settledSince = ContinuousClock.now
                let deadline = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now - settledSince < .milliseconds(500) {
                    try #require(ContinuousClock.now < deadline, "the thawed runtime's reports never settled")
                    let now = try await api.plane.store.session(id)?.runtime.ackedSeq ?? 0
                    if now != acked { (acked, settledSince) = (now, ContinuousClock.now) }
                    try await Task.sleep(for: .milliseconds(25))
                }
                let lateReports = acked - ackedAtFailure
                #expect(lateReports > 0, "the thawed runtime reported nothing late")
                let execution = try await api.request(.get, "/v1/sessions/\(id)/executions/\(executionId)")
                #expect(execution["status"] == "failed", "the failed execution changed: \(execution.text)")
                let afterThaw = try await api.events(id)
                #expect(afterThaw.map(\.id) == Array(1...Int64(afterThaw.count)), "ids with gaps")
                #expect(
                    !afterThaw.contains { $0.executionId == executionId && $0.id > failure.id }, "events recorded for the failed execution after its failure")
                #expect(Array(afterThaw.prefix(atFailure.count)).map(\.id) == atFailure.map(\.id))

                // The same runtime (it was never declared dead) runs the follow-up.
                let session = try await api.request(.get, "/v1/sessions/\(id)")
                let follow = try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say after the freeze"])
                #expect(follow.status == 202, "\(follow.text)")
                let completed = try await api.waitForExecution(id, status: "completed", within: 15)
                let final = try await api.events(id)
                #expect(final.map(\.id) == Array(1...Int64(final.count)), "ids with gaps")
                #expect(
                    final.filter { $0.executionId == completed["executionId"]?.stringValue && $0.type == "agent" }.compactMap { $0.data["text"]?.stringValue }
                        == ["after the freeze"])
                let replaced = final.filter { $0.type == "runtime.started" }.count > 1
                Reliability.report(
                    Self.part,
                    "SIGSTOP: runtime \(session["runtime"]?["state"]?.stringValue ?? "?") after the thaw; execution failed (\(failed["error"]?.stringValue ?? "")); late reports refused \(lateReports) (acknowledged, not recorded); follow-up completed on \(replaced ? "a replacement" : "the same") runtime; events checked \(final.count)"
                )
            }
        }

        @Test("a follow-up sent the moment a frozen runtime thaws, while it is still stopping the failed execution, runs once the runtime is free")
        func followUpRightAfterTheThaw() async throws {
            let server = try TestServer(timing: Self.timing)
            defer { Reliability.killProcesses(under: server.directory.url) }
            try await server.run { api in
                // Sent as soon as the execution has failed and the runtime thaws, the follow-up's
                // `execute` can reach the runtime before it has stopped the old agent (whose shell
                // ignores SIGTERM), and a busy runtime ignores an `execute`.
                let id = try await api.createSession(["prompt": "say start\nrun trap '' TERM; sleep 30"])
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                try await eventually(within: 20, "the agent to start") { try await api.events(id).contains { $0.type == "agent" } }
                let process = try await api.runtimeItself(id)
                #expect(kill(process.pid, SIGSTOP) == 0)
                do {
                    defer { kill(process.pid, SIGCONT) }
                    try await api.waitForExecution(id, status: "failed", within: 10)
                }
                let follow = try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say after the thaw"])
                #expect(follow.status == 202, "\(follow.text)")
                let started = Date()
                let execution: JSONValue
                do {
                    execution = try await api.waitForExecution(id, status: "completed", within: Double(Self.timing.pendingTimeoutMs) / 1000 - 1)
                } catch {
                    // What the control plane and the runtime logged about it, to tell why.
                    let runtimeLog = (try? String(contentsOf: server.directory.url.appendingPathComponent("data/runtimes/\(id).log"), encoding: .utf8)) ?? ""
                    print("SERVER LOG:\n" + server.logs.all.filter { $0.contains(id.rawValue) }.joined(separator: "\n"))
                    print("RUNTIME LOG:\n" + runtimeLog)
                    throw error
                }
                #expect(execution["executionId"] == follow["executionId"])
                let events = try await api.events(id)
                #expect(events.map(\.id) == Array(1...Int64(events.count)), "ids with gaps")
                Reliability.report(
                    Self.part, "follow-up at the thaw: completed \(String(format: "%.2f", Date().timeIntervalSince(started))) s after it was accepted")
            }
        }
    }
}
