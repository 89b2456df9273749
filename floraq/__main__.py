from floraq.cli import main

main()
