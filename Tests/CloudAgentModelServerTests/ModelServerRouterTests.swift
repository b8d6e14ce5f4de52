import CloudAgentTestSupport
import CloudAgentCore
@testable import CloudAgentModelServer
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@Suite struct ModelServerRouterTests {
    static let bashTool =
        #"{"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}, "description": {"type": "string"}}}}"#

    func messagesBody(stream: Bool, tools: Bool = true) -> ByteBuffer {
        ByteBuffer(
            string: """
                {"model": "claude-x", "stream": \(stream), "max_tokens": 100,
                 "messages": [{"role": "user", "content": "Write hello.txt"}],
                 "tools": [\(tools ? Self.bashTool : "")]}
                """)
    }

    func responsesBody() -> ByteBuffer {
        ByteBuffer(
            string: """
                {"model": "gpt-x", "stream": true, "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                 "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}]}
                """)
    }

    /// The `data:` objects of a server-sent event stream.
    func events(_ body: ByteBuffer) throws -> [[String: JSONValue]] {
        try String(buffer: body).split(separator: "\n").filter { $0.hasPrefix("data: ") }.map {
            try #require(try JSONText.decode(Data($0.dropFirst(6).utf8)).objectValue)
        }
    }

    func withServer(_ script: ModelScript, _ test: @escaping @Sendable (any TestClientProtocol, ScriptedModel) async throws -> Void) async throws {
        let model = try ScriptedModel(script: script)
        let app = Application(router: buildModelServerRouter(model: model))
        try await app.test(.router) { client in try await test(client, model) }
    }

    @Test func messagesStreamsTheScriptedToolCallThenText() async throws {
        try await withServer(ModelScript(turns: [.shell("echo hi > hello.txt"), .text("Done.")])) { client, model in
            let first = try await client.execute(uri: "/v1/messages?beta=true", method: .post, body: messagesBody(stream: true))
            #expect(first.status == .ok)
            #expect(first.headers[.contentType] == "text/event-stream")
            let toolEvents = try events(first.body)
            #expect(toolEvents.first?["type"] == "message_start")
            #expect(toolEvents.contains { $0["content_block"]?.objectValue?["name"] == "Bash" })
            let second = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: true))
            let textEvents = try events(second.body)
            #expect(textEvents.contains { $0["delta"]?.objectValue?["text"] == "Done." })
            #expect(await model.requests.map(\.reply) == ["tool:Bash", "text"])
        }
    }

    @Test func messagesWithoutStreamIsOneJSONMessage() async throws {
        try await withServer(ModelScript(turns: [.text("Hello.")])) { client, _ in
            let response = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: false))
            #expect(response.headers[.contentType] == "application/json")
            let message = try #require(try JSONText.decode(Data(response.body.readableBytesView)).objectValue)
            #expect(message["content"] == [["type": "text", "text": "Hello."]])
        }
    }

    @Test func anAuxiliaryRequestLeavesTheTurnForTheMainOne() async throws {
        try await withServer(ModelScript(turns: [.text("Main.")], auxiliaryText: "Title")) { client, model in
            let aux = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: false, tools: false))
            #expect(try JSONText.decode(Data(aux.body.readableBytesView)).objectValue?["content"] == [["type": "text", "text": "Title"]])
            let main = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: false))
            #expect(try JSONText.decode(Data(main.body.readableBytesView)).objectValue?["content"] == [["type": "text", "text": "Main."]])
            #expect(await model.requests.map(\.main) == [false, true])
        }
    }

    @Test func responsesStreamsAFunctionCall() async throws {
        try await withServer(ModelScript(turns: [.shell("ls")])) { client, _ in
            let response = try await client.execute(uri: "/v1/responses", method: .post, body: responsesBody())
            let streamed = try events(response.body)
            #expect(streamed.first?["type"] == "response.created")
            #expect(streamed.last?["type"] == "response.completed")
            let item = try #require(streamed.first { $0["type"] == "response.output_item.done" }?["item"]?.objectValue)
            #expect(item["name"] == "exec_command")
            #expect(item["arguments"] == #"{"cmd":"ls"}"#)
        }
    }

    @Test func anErrorTurnAnswersInEachAPIsShapeAndAsksNotToRetry() async throws {
        let error = ScriptTurn(.error(ScriptedError(status: 529, message: "Overloaded")), times: 2)
        try await withServer(ModelScript(turns: [error])) { client, _ in
            let anthropic = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: true))
            #expect(anthropic.status.code == 529)
            #expect(anthropic.headers[HTTPField.Name("x-should-retry")!] == "false")
            #expect(try JSONText.decode(Data(anthropic.body.readableBytesView)).objectValue?["error"] == ["type": "overloaded_error", "message": "Overloaded"])
            let openAI = try await client.execute(uri: "/v1/responses", method: .post, body: responsesBody())
            #expect(openAI.status.code == 529)
            #expect(try JSONText.decode(Data(openAI.body.readableBytesView)).objectValue?["error"]?.objectValue?["message"] == "Overloaded")
        }
    }

    @Test func anErrorInTheStreamComesAfterAStartedResponse() async throws {
        let error = ScriptTurn(.error(ScriptedError(status: 500, message: "Cut off", inStream: true)))
        try await withServer(ModelScript(turns: [error])) { client, _ in
            let response = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: true))
            #expect(response.status == .ok)
            #expect(try events(response.body).map { $0["type"] } == ["message_start", "error"])
        }
    }

    @Test func probesAndTheRecordOfRequests() async throws {
        try await withServer(ModelScript()) { client, _ in
            #expect(try await client.execute(uri: "/api/hello", method: .head).status == .ok)
            let models = try await client.execute(uri: "/v1/models", method: .get)
            #expect(try JSONText.decode(Data(models.body.readableBytesView)).objectValue?["data"]?.arrayValue?.count == 1)
            let count = try await client.execute(uri: "/v1/messages/count_tokens", method: .post, body: messagesBody(stream: false))
            #expect(try JSONText.decode(Data(count.body.readableBytesView)).objectValue?["input_tokens"]?.intValue ?? 0 > 0)
            #expect(try await client.execute(uri: "/v1/chat/completions", method: .post, body: ByteBuffer(string: "{}")).status == .notFound)
            let invalid = try await client.execute(uri: "/v1/responses", method: .post, body: ByteBuffer(string: "not json"))
            #expect(invalid.status == .badRequest)
            _ = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: false))

            let recorded = try await client.execute(uri: "/requests", method: .get)
            let requests = try JSONDecoder().decode([RecordedRequest].self, from: Data(recorded.body.readableBytesView))
            #expect(requests.map(\.reply) == ["probe", "models", "count_tokens", "not-found", "invalid", "default"])
            #expect(requests.map(\.path) == ["/api/hello", "/v1/models", "/v1/messages/count_tokens", "/v1/chat/completions", "/v1/responses", "/v1/messages"])
            #expect(requests.last?.messages == [["role": "user", "content": "Write hello.txt"]])
            #expect(requests.last?.tools == ["Bash"])
            #expect(requests.last?.model == "claude-x")
        }
    }

    @Test func aSlowStreamWaitsBetweenEvents() async throws {
        let slow = ScriptTurn(.text, text: "one two three", chunkDelay: .milliseconds(100))
        let model = try ScriptedModel(script: ModelScript(turns: [slow]))
        let app = Application(router: buildModelServerRouter(model: model), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let started = ContinuousClock.now
            let response = try await client.execute(uri: "/v1/messages", method: .post, body: messagesBody(stream: true))
            let elapsed = ContinuousClock.now - started
            let streamed = try events(response.body)
            // message_start, block start, 3 deltas, block stop, message_delta, message_stop: 7 pauses.
            #expect(streamed.count == 8)
            #expect(elapsed >= .milliseconds(700))
            #expect(elapsed < .seconds(10))
        }
    }
}
