from animeprov.cli import main

main()
