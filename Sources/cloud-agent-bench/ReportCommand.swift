import ArgumentParser
import Foundation

/// `report`: turns the JSON lines of earlier runs (`--json`) into the Markdown table of
/// BENCHMARKS.md, figures in the order given.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report", abstract: "Render JSON-lines results (from --json runs) as a Markdown table."
    )

    @Argument(help: "Files of JSON lines; lines that are not figures are skipped.") var files: [String]

    func run() throws {
        var figures: [Figure] = []
        for file in files {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            figures += text.split(separator: "\n").compactMap { Figure.parse(line: String($0)) }
        }
        print(Figure.markdown(figures))
    }
}
