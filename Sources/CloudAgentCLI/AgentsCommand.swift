import ArgumentParser
import CloudAgentCore
import Foundation
import NIOHTTP1

/// `cloud-agent agents`: what the server can run (`GET /v1/agents`).
struct AgentsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agents",
        abstract: "List the agents the server can run: name, kind, availability, version, binary.",
        discussion: ExitStatus.summary
    )

    @OptionGroup var client: ClientOptions

    func run() async throws {
        let answer = try await client.client().send(.GET, "/v1/agents")
        let console = Console.shared
        if client.json {
            console.line(answer.line)
            return
        }
        let agents = answer.json["agents"]?.arrayItems ?? []
        let width = max(5, agents.compactMap { $0["name"]?.stringValue?.count }.max() ?? 0)
        for agent in agents {
            let name = (agent["name"]?.stringValue ?? "?").padding(toLength: width, withPad: " ", startingAt: 0)
            let kind = (agent["kind"]?.stringValue ?? "?").padding(toLength: 12, withPad: " ", startingAt: 0)
            if agent["available"] == .bool(true) {
                let version = agent["version"]?.stringValue ?? "version unknown"
                console.line(
                    "\(console.paint("✓", .green)) \(console.paint(name, .bold))  \(kind) \(version)  \(console.paint(agent["binary"]?.stringValue ?? "", .dim))"
                )
            } else {
                console.line(
                    "\(console.paint("✗", .red)) \(console.paint(name, .bold))  \(kind) \(console.paint(agent["reason"]?.stringValue ?? "not available", .dim))"
                )
            }
        }
    }
}
