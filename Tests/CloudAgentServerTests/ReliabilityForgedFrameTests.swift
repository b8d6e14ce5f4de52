import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSandbox
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import HummingbirdTesting
import Testing

#if canImport(Glibc)
    import Glibc
#endif

extension ReliabilityHarness {
    /// A runtime is on the agent's side of the boundary: whatever it sends is data. These frames
    /// are well-formed enough to pass the decoder, with hostile values in every field — a forged
    /// `processGroup` and `pid` naming a process the control plane never launched, sequence
    /// numbers and counts at the limits of their types, timestamps far from now, other sessions'
    /// execution ids, unknown kinds.
    @Suite("Reliability: forged runtime frames", .processes)
    struct ReliabilityForgedFrameTests {
        static let part = "forged-frames"

        /// Values a forged number field takes.
        static let numbers: [String] = [
            "0", "-1", "1", "2147483647", "2147483648", "-2147483649", "4294967296", "9007199254740993", "9.2e18", "1e300", "-1e300",
            "1.5", "-0.0", "\"12\"", "null", "true", "[]", "{}",
        ]

        static func frames(executionId: String, sentinel: Int32, using random: inout SeededRandom) -> [String] {
            func number() -> String { numbers[Int.random(in: 0..<numbers.count, using: &random)] }
            func execution() -> String {
                ["\"\(executionId)\"", "\"exc_\(UUID().uuidString.lowercased())\"", "\"\"", "\"../../x\"", "\"\\u0000\""][Int.random(in: 0..<5, using: &random)]
            }
            let kinds = ["execution.running", "agent", "output", "execution.ended", "execution.unknown", ""]
            var frames: [String] = []
            var seq = 0
            for index in 0..<240 {
                seq += 1
                let kind = kinds[index % kinds.count]
                let data: String
                switch kind {
                case "execution.running":
                    data = #"{"pid":\#(sentinel),"processGroup":\#(index % 2 == 0 ? String(sentinel) : number())}"#
                case "execution.ended":
                    data =
                        #"{"status":"\#(["completed", "failed", "interrupted", "x"][index % 4])","exitCode":\#(number()),"processGroup":\#(sentinel),"conversationId":"c\#(index)"}"#
                default:
                    data = #"{"kind":"text","text":"forged \#(index)","processGroup":\#(sentinel),"n":\#(number())}"#
                }
                let seqText = index % 7 == 0 ? number() : String(seq)
                let at = index % 5 == 0 ? number() : "0"
                switch index % 4 {
                case 3:
                    frames.append(#"{"type":"heartbeat","executionId":\#(execution()),"at":\#(at),"events":\#(number())}"#)
                default:
                    frames.append(#"{"type":"event","event":{"seq":\#(seqText),"executionId":\#(execution()),"kind":"\#(kind)","at":\#(at),"data":\#(data)}}"#)
                }
            }
            frames.append(#"{"type":"pong","nonce":\#(number())}"#)
            frames.append(#"{"type":"hello","runtimeId":"forged","protocolVersion":\#(Int.max),"activeExecutionId":"\#(executionId)","lastSeq":-5}"#)
            return frames
        }

        @Test("forged frames from a runtime: no trap, no signal to a process it names, the session stays consistent and is deleted cleanly")
        func forgedFrames() async throws {
            let (server, secrets) = try ReliabilityHostileInputTests.serverCapturingSecrets()
            defer { _ = Reliability.killProcesses(under: server.directory.url) }
            // A process of the host that the frames name as the agent's process group and pid.
            let sentinel = try ProcessControl.spawnDetached(
                argv: ["/bin/sleep", "120"], environment: ["PATH": ExecutableLookup.defaultPath],
                workingDirectory: server.directory.url, stdin: nil, logFile: server.directory.url.appendingPathComponent("sentinel.log")
            )
            defer { ProcessControl.signal(sentinel, SIGKILL); _ = ProcessControl.reapIfExited(sentinel.pid) }
            var random = SeededRandom(seed: Reliability.seed("\(Self.part)/frames"))
            // Made up front: the execution's id is filled in once known.
            let template = Self.frames(executionId: "EXECUTION_ID", sentinel: sentinel.pid, using: &random)
            try await server.run { api in
                let port = try #require(api.client.port)
                let id = try await api.createSession(["prompt": "sleep 30"])
                try await api.waitForRuntime(id, state: "running")
                let started = try await api.request(.post, "/v1/sessions/\(id)/initiate")
                let executionId = try #require(started["executionId"]?.stringValue)
                try await api.waitForExecution(id, status: "running")
                let secret = try ReliabilityHostileInputTests.secret(of: id, in: secrets)
                let headers = ["X-Cloud-Agent-Session": id.rawValue, "X-Cloud-Agent-Runtime-Secret": secret]
                let frames = template.map { $0.replacingOccurrences(of: "EXECUTION_ID", with: executionId) }
                var connections = 0
                // In a few connections (a refused frame may end one), each opening with a hello.
                var rest = frames[...]
                while !rest.isEmpty {
                    let socket = try await HostileWebSocket.open(port: port, path: RuntimeProtocolPath.path, headers: headers)
                    #expect(socket.status == 101, "\(socket.responseHead)")
                    connections += 1
                    let hello = #"{"type":"hello","runtimeId":"forged","protocolVersion":1,"activeExecutionId":"\#(executionId)","lastSeq":0}"#
                    let batch = Array(rest.prefix(40))
                    rest = rest.dropFirst(40)
                    try await Reliability.offThePool {
                        socket.sendFrame(opcode: 0x1, payload: Array(hello.utf8))
                        for frame in batch { socket.sendFrame(opcode: 0x1, payload: Array(frame.utf8)) }
                        socket.sendFrame(opcode: 0x8, payload: [0x03, 0xE8])
                    }
                    _ = await socket.readUntilClosedInBackground()
                    #expect(await api.isHealthy(), "the server is down after forged frames")
                }
                // Every view still renders, whatever the frames carried.
                let view = try await api.request(.get, "/v1/sessions/\(id)")
                #expect(view.status == 200, "\(view.text)")
                let events = try await api.request(.get, "/v1/sessions/\(id)/events?limit=1000")
                #expect(events.status == 200, "\(events.text.prefix(300))")
                #expect(try await api.request(.get, "/v1/sessions/\(id)/executions").status == 200)
                // The stop signals only what the control plane launched: the sentinel lives on.
                #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 204)
                #expect(ProcessControl.isAlive(sentinel), "a process named in a frame was signalled")
                #expect(try await api.request(.get, "/v1/sessions/\(id)").status == 404)
                Reliability.report(
                    Self.part,
                    "\(frames.count) forged frames (seeded) in \(connections) runtime connections: server up, views render, the named process (pid and group \(sentinel.pid)) untouched by the stop"
                )
            }
        }
    }
}
