import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import Testing

/// Completion callbacks through the real server, real runtimes and a real HTTP receiver.
@Suite("Completion callbacks: signed, retried, durable", .processes)
struct CallbackTests {
    @Test("each execution's end is POSTed once, signed with the key `cloud-agent callbacks key` prints, with the right body")
    func signedBodiesForEveryEnd() async throws {
        let server = try TestServer()
        let hookSecret = "Bearer hook-\(UUID().uuidString)"
        // The CLI creates the key before the server ever ran; the server must sign with it.
        let key = try await callbacksKeyFromTheBinary(dataDirectory: server.configuration.dataDirectory, in: server.directory)
        #expect(key.count == 64)
        let receiver = CallbackReceiver()
        try await receiver.serve { url in
            try await server.run { api in
                let id = try await api.createSession([
                    "prompt": "say hello",
                    "callback": [
                        "url": .string(url),
                        "headers": [
                            "Authorization": .string(hookSecret), "X-CloudAgent-Signature": "forged",
                        ],
                    ],
                ])
                #expect(try await api.plane.store.settingSavingIfAbsent(CallbackSignature.settingKey, value: "other") == key)

                // Completed.
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                let completed = try await api.waitForExecution(id, status: "completed")
                let first = try await receiver.waitForRequest(1)
                let completedBody = try Self.bodyObject(first)
                #expect(completedBody["sessionId"] == .string(id.rawValue))
                #expect(completedBody["executionId"] == completed["executionId"])
                #expect(completedBody["status"] == "completed")
                #expect(completedBody["exitCode"] == 0)
                #expect(completedBody["error"] == .null)
                #expect(completedBody["interruptReason"] == .null)
                #expect(completedBody["workBranch"] == .string("session/\(id.rawValue)"))
                #expect(completedBody["completedAt"] == completed["completedAt"])

                // Failed (`exit 3`).
                #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say bye\nexit 3"]).status == 202)
                let failed = try await api.waitForExecution(id, status: "failed")
                let failedBody = try Self.bodyObject(try await receiver.waitForRequest(2))
                #expect(failedBody["executionId"] == failed["executionId"])
                #expect(failedBody["status"] == "failed")
                #expect(failedBody["exitCode"] == 3)
                #expect(failedBody["error"]?.stringValue?.isEmpty == false)
                #expect(failedBody["interruptReason"] == .null)
                #expect(failedBody["completedAt"] == failed["completedAt"])

                // Interrupted by the user.
                #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say wait\nsleep 30"]).status == 202)
                try await api.waitForExecution(id, status: "running")
                #expect(try await api.request(.post, "/v1/sessions/\(id)/interrupt")["interrupted"] == true)
                let interrupted = try await api.waitForExecution(id, status: "interrupted")
                let interruptedBody = try Self.bodyObject(try await receiver.waitForRequest(3))
                #expect(interruptedBody["executionId"] == interrupted["executionId"])
                #expect(interruptedBody["status"] == "interrupted")
                #expect(interruptedBody["interruptReason"] == interrupted["interruptReason"])
                #expect(interruptedBody["interruptReason"]?.stringValue?.isEmpty == false)

                for request in receiver.received {
                    #expect(request.header("Content-Type") == "application/json")
                    #expect(request.header("Authorization") == hookSecret)
                    #expect(request.headers[values: HTTPField.Name("X-CloudAgent-Signature")!].count == 1)
                    let timestamp = try #require(request.header("X-CloudAgent-Timestamp").flatMap(Int64.init))
                    #expect(abs(Double(timestamp) - Date().timeIntervalSince1970) < 120)
                    #expect(try await verifyWithOpenSSL(request, key: key, in: server.directory), "signature of \(request.body)")
                    #expect(request.header("X-CloudAgent-Signature") != "forged")
                }
                // One delivery per execution, each recorded as an event.
                try await eventually(within: 10, "three callback.delivered events") {
                    try await api.events(id).filter { $0.type == "callback.delivered" }.count == 3
                }
                let delivered = try await api.events(id).filter { $0.type == "callback.delivered" }
                #expect(delivered.map { $0.data["executionId"] } == [completed, failed, interrupted].map { $0["executionId"] })
                #expect(delivered.map(\.executionId) == [completed, failed, interrupted].map { $0["executionId"]?.stringValue })
                for event in delivered {
                    #expect(event.data["url"] == .string(url))
                    #expect(event.data["status"] == 200)
                    #expect(event.data["attempts"] == 1)
                }
                #expect(receiver.received.count == 3)
                #expect(try await api.plane.store.nextCallbackDue() == nil)
            }
        }
        let logs = server.logs.text
        #expect(logs.components(separatedBy: "callback delivered").count - 1 == 3)
        #expect(!logs.contains(hookSecret), "a callback header value was logged")
        #expect(!logs.contains(key), "the signing key was logged")
    }

    @Test("a receiver answering 500 twice then 200 gets the same signed body three times; delivered on attempt 3")
    func retriedAfterServerErrors() async throws {
        let server = try Self.server(retryBaseMs: 100)
        let receiver = CallbackReceiver(answers: [500, 500], otherwise: 200)
        try await receiver.serve { url in
            try await server.run { api in
                let id = try await api.createSession(["prompt": "say hello", "callback": ["url": .string(url)]])
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                let execution = try await api.waitForExecution(id, status: "completed")
                let delivered = try await api.waitForEvent(id, type: "callback.delivered")
                #expect(delivered.data["attempts"] == 3)
                #expect(delivered.data["status"] == 200)
                #expect(delivered.data["executionId"] == execution["executionId"])
                #expect(try await api.events(id).filter { $0.type.hasPrefix("callback.") }.count == 1)

                let requests = receiver.received
                #expect(requests.count == 3)
                #expect(Set(requests.map(\.body)).count == 1, "every attempt sends the same bytes")
                let key = try await api.plane.store.settingSavingIfAbsent(CallbackSignature.settingKey, value: "unused")
                for request in requests { #expect(try await verifyWithOpenSSL(request, key: key, in: server.directory)) }
                // Backoff: 100 ms, then 200 ms.
                if requests.count == 3 {
                    #expect(requests[1].at - requests[0].at >= .milliseconds(90))
                    #expect(requests[2].at - requests[1].at >= .milliseconds(190))
                }
                #expect(try await api.plane.store.nextCallbackDue() == nil)
            }
        }
        #expect(server.logs.text.contains("callback delivered"))
    }

    @Test("a 400 is not retried: one request, callback.failed, nothing left in the outbox")
    func notRetriedAfterClientError() async throws {
        let server = try Self.server(retryBaseMs: 100)
        let receiver = CallbackReceiver(otherwise: 400)
        try await receiver.serve { url in
            try await server.run { api in
                let id = try await api.createSession(["prompt": "say hello", "callback": ["url": .string(url)]])
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                let execution = try await api.waitForExecution(id, status: "completed")
                let failed = try await api.waitForEvent(id, type: "callback.failed")
                #expect(failed.executionId == execution["executionId"]?.stringValue)
                #expect(failed.data["url"] == .string(url))
                #expect(failed.data["status"] == 400)
                #expect(failed.data["attempts"] == 1)
                #expect(failed.data["error"]?.stringValue?.contains("400") == true)
                // Given up for good: nothing is pending, so no retry can come.
                #expect(try await api.plane.store.nextCallbackDue() == nil)
                #expect(receiver.received.count == 1)
                #expect(try await api.events(id).filter { $0.type == "callback.delivered" }.isEmpty)
            }
        }
        #expect(server.logs.text.contains("callback failed"))
    }

    @Test("a pending callback survives a control-plane restart and is delivered by the next one")
    func deliveredAfterRestart() async throws {
        let directory = try TemporaryDirectory()
        let first = try Self.server(directory: directory, retryBaseMs: 3000)
        let receiver = CallbackReceiver(otherwise: 500)
        let session = Handoff()
        try await receiver.serve { url in
            try await first.run { api in
                let id = try await api.createSession(["prompt": "say hello", "callback": ["url": .string(url)]])
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                let execution = try await api.waitForExecution(id, status: "completed")
                session.set(id, execution)
                // The first attempt got a 500 and is rescheduled; the control plane goes down before the retry.
                try await eventually(within: 10, "the first attempt recorded") {
                    try await api.plane.store.dueCallbacks(before: Date().addingTimeInterval(3600), limit: 10).first?.attempts == 1
                }
                #expect(receiver.received.count == 1)
            }
            let (id, execution) = try #require(session.get())
            receiver.answer(from: 200)
            let second = try Self.server(directory: directory, retryBaseMs: 3000)
            try await second.run { api in
                let delivered = try await api.waitForEvent(id, type: "callback.delivered", within: 20)
                #expect(delivered.data["attempts"] == 2)
                #expect(delivered.data["status"] == 200)
                #expect(delivered.data["executionId"] == execution["executionId"])
                #expect(try await api.plane.store.nextCallbackDue() == nil)
            }
            #expect(second.logs.text.contains("callback delivered"))
        }
        let requests = receiver.received
        #expect(requests.count == 2)
        #expect(Set(requests.map(\.body)).count == 1)
    }

    @Test("an execution the control plane ends (its runtime was killed) gets its callback too, exitCode null")
    func controlPlaneDeclaredFailure() async throws {
        let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1200, stopGraceMs: 1500)
        let server = try TestServer(timing: timing)
        let receiver = CallbackReceiver()
        try await receiver.serve { url in
            try await server.run { api in
                let id = try await api.createSession(["prompt": "sleep 30", "callback": ["url": .string(url)]])
                #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
                try await api.waitForExecution(id, status: "running")
                try await api.killRuntime(id)
                let execution = try await api.waitForExecution(id, status: "failed", within: 10)
                let body = try Self.bodyObject(try await receiver.waitForRequest(1))
                #expect(body["executionId"] == execution["executionId"])
                #expect(body["status"] == "failed")
                #expect(body["exitCode"] == .null)
                #expect(body["error"] == execution["error"])
                #expect(try await api.waitForEvent(id, type: "callback.delivered").data["attempts"] == 1)
                #expect(receiver.received.count == 1)
            }
        }
    }

    static func server(directory: TemporaryDirectory? = nil, retryBaseMs: Int64) throws -> TestServer {
        var server = try TestServer(directory: directory)
        server.callbackRetryBaseMs = retryBaseMs
        return server
    }

    /// The body of a received callback as a JSON object, checking that it has exactly the documented keys.
    static func bodyObject(_ request: CallbackReceiver.Received) throws -> [String: JSONValue] {
        let object = try #require(try JSONDecoder().decode(JSONValue.self, from: Data(request.body.utf8)).objectValue, "\(request.body)")
        #expect(
            Set(object.keys) == [
                "sessionId", "executionId", "status", "exitCode", "error", "interruptReason", "workBranch", "completedAt",
            ])
        return object
    }
}

/// An HTTP receiver on 127.0.0.1 for callbacks: records every request to `/hook` and answers
/// with its scripted statuses, then with `otherwise`.
final class CallbackReceiver: Sendable {
    struct Received: Sendable {
        var headers: HTTPFields
        var body: String
        var at: ContinuousClock.Instant

        func header(_ name: String) -> String? { HTTPField.Name(name).flatMap { headers[$0] } }
    }

    private struct State {
        var received: [Received] = []
        var answers: [Int]
        var otherwise: Int
    }

    private let state: Mutex<State>

    init(answers: [Int] = [], otherwise: Int = 200) {
        state = Mutex(State(answers: answers, otherwise: otherwise))
    }

    var received: [Received] { state.withLock { $0.received } }

    /// From now on every request gets `status`.
    func answer(from status: Int) {
        state.withLock {
            $0.answers = []
            $0.otherwise = status
        }
    }

    private func record(_ request: Received) -> Int {
        state.withLock { state in
            state.received.append(request)
            return state.answers.isEmpty ? state.otherwise : state.answers.removeFirst()
        }
    }

    /// Waits until at least `count` requests arrived; returns the `count`-th.
    func waitForRequest(_ count: Int, within seconds: Double = 15) async throws -> Received {
        try await eventually(within: seconds, "callback request #\(count)") { self.received.count >= count }
        let received = self.received
        try #require(received.count >= count)
        return received[count - 1]
    }

    /// Listens on a free port while `body` runs; `body` gets the receiver's URL.
    func serve(_ body: @Sendable (String) async throws -> Void) async throws {
        let router = Router()
        router.post("hook") { request, _ -> Response in
            let bytes = try await request.body.collect(upTo: 1 << 20)
            let status = self.record(Received(headers: request.headers, body: String(buffer: bytes), at: .now))
            return Response(status: HTTPResponse.Status(code: status))
        }
        var logger = Logger(label: "callback-receiver")
        logger.logLevel = .warning
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: logger)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            try await body("http://127.0.0.1:\(port)/hook")
        }
    }
}

/// Checks a received callback's signature as the shell example in docs/callbacks.md does, with openssl.
func verifyWithOpenSSL(_ request: CallbackReceiver.Received, key: String, in directory: TemporaryDirectory) async throws -> Bool {
    let timestamp = try #require(request.header("X-CloudAgent-Timestamp"))
    let signature = try #require(request.header("X-CloudAgent-Signature"))
    let bodyFile = directory.url.appendingPathComponent("callback-\(UUID().uuidString).json")
    try Data(request.body.utf8).write(to: bodyFile)
    defer { try? FileManager.default.removeItem(at: bodyFile) }
    // The key is hex and the timestamp digits: neither needs quoting.
    let output = try await shell("{ printf '%s.' '\(timestamp)'; cat '\(bodyFile.path)'; } | openssl dgst -sha256 -hmac '\(key)' -r")
    let hex = output.split(separator: " ").first.map(String.init) ?? ""
    return !hex.isEmpty && signature == "sha256=" + hex
}

/// `cloud-agent callbacks key --data-dir DIR`, run as a real process; its last line.
func callbacksKeyFromTheBinary(dataDirectory: URL, in directory: TemporaryDirectory) async throws -> String {
    let command = try SpawnedCommand(["callbacks", "key", "--data-dir", dataDirectory.path], in: directory.url)
    defer { command.forceStop() }
    try await command.waitForExit(within: 60)
    try #require(command.exitStatus == 0, "cloud-agent callbacks key failed:\n\(command.diagnostics)")
    let lines = command.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    return try #require(lines.last, "no key printed:\n\(command.diagnostics)")
}

extension TestAPI {
    /// Waits for the session's first event of `type`; returns it.
    func waitForEvent(_ id: SessionID, type: String, within seconds: Double = 15) async throws -> EventView {
        try await eventually(within: seconds, "a \(type) event") { try await events(id).contains { $0.type == type } }
        return try #require(try await events(id).first { $0.type == type })
    }
}
