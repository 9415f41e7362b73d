from lacrima.cli import main

main()
